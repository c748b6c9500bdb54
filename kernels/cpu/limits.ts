/**
 * What the native CPU backend plans with: its limits (no binding limit to speak of; buffers are
 * host memory) and the name every command prints for it.
 *
 * @module
 */
import type { DeviceLimits } from "../device.ts";

/**
 * The CPU device's limits. Buffers are host memory, so the binding and buffer limits are only
 * there to keep element offsets within the u32 words of the shard records (a tensor shard holds
 * fewer than 2^32 bytes). The alignment and grid limits are WebGPU's, so a program has the same
 * layout of records, chunks and slots on both backends.
 */
export const CPU_LIMITS: DeviceLimits = {
  maxStorageBufferBindingSize: 2 ** 32 - 256,
  maxBufferSize: 2 ** 40,
  maxComputeWorkgroupsPerDimension: 65535,
  maxComputeInvocationsPerWorkgroup: 256,
  maxComputeWorkgroupStorageSize: 16384,
  maxStorageBuffersPerShaderStage: 8,
  minStorageBufferOffsetAlignment: 256,
};

/** The CPU's model name, from /proc/cpuinfo (Linux) or sysctl's answer (macOS), else "CPU". */
export function cpuModel(): string {
  try {
    const info = Deno.readTextFileSync("/proc/cpuinfo");
    const m = /^model name\s*:\s*(.+)$/m.exec(info);
    if (m) return m[1].trim();
  } catch { /* not Linux */ }
  try {
    const out = new Deno.Command("sysctl", { args: ["-n", "machdep.cpu.brand_string"] })
      .outputSync();
    const name = new TextDecoder().decode(out.stdout).trim();
    if (out.success && name) return name;
  } catch { /* no sysctl */ }
  return "CPU";
}

/** Threads the CPU backend uses: ESFLOW_THREADS, else every core. */
export function cpuThreads(requested?: number): number {
  const env = Deno.env.get("ESFLOW_THREADS");
  const n = requested ?? (env ? Number(env) : navigator.hardwareConcurrency);
  return Number.isInteger(n) && n >= 1 ? n : 1;
}

/** "AMD EPYC, 2 threads": the device name of the CPU backend before its BLAS is loaded. */
export function cpuName(threads = cpuThreads()): string {
  return `${cpuModel()}, ${threads} thread${threads === 1 ? "" : "s"}`;
}
