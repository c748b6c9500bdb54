/**
 * Steps: the unit of GPU work. A Step is one dispatch of one compiled kernel with its bind group
 * already made, so a list of steps built once can be encoded every iteration at ~20 µs a
 * dispatch, with no recompilation and no bind-group churn.
 *
 * @module
 */
import type { Gpu } from "./runtime.ts";

/** One compute dispatch, ready to encode. */
export interface Step {
  /** What this step computes, e.g. "layer3.q_proj". */
  label: string;
  /** The kernel's name, e.g. "matmul". */
  kernel: string;
  pipeline: GPUComputePipeline;
  bindGroup: GPUBindGroup;
  workgroups: [number, number, number];
}

/** A buffer binding: a whole buffer, or a byte range of one. */
export type Binding = GPUBuffer | { buffer: GPUBuffer; offset?: number; size?: number };

/** Builds a step binding `buffers[i]` at @binding(i) of @group(0). */
export function makeStep(
  gpu: Gpu,
  options: {
    label: string;
    kernel: string;
    pipeline: GPUComputePipeline;
    buffers: Binding[];
    workgroups: [number, number, number] | number;
  },
): Step {
  const entries: GPUBindGroupEntry[] = options.buffers.map((b, i) => ({
    binding: i,
    resource: b instanceof GPUBuffer ? { buffer: b } : b,
  }));
  const bindGroup = gpu.device.createBindGroup({
    label: options.label,
    layout: options.pipeline.getBindGroupLayout(0),
    entries,
  });
  const wg = typeof options.workgroups === "number"
    ? [options.workgroups, 1, 1] as [number, number, number]
    : options.workgroups;
  const max = gpu.limits.maxComputeWorkgroupsPerDimension;
  if (wg.some((w) => w > max)) {
    throw new Error(
      `step ${options.label}: workgroups ${wg} exceed the per-dimension limit ${max}`,
    );
  }
  return {
    label: options.label,
    kernel: options.kernel,
    pipeline: options.pipeline,
    bindGroup,
    workgroups: wg,
  };
}

/** Encodes `steps` in order into one compute pass. */
export function encodeSteps(encoder: GPUCommandEncoder, steps: readonly Step[]): void {
  const pass = encoder.beginComputePass({ label: "esflow" });
  for (const s of steps) {
    if (s.workgroups[0] * s.workgroups[1] * s.workgroups[2] === 0) continue;
    pass.setPipeline(s.pipeline);
    pass.setBindGroup(0, s.bindGroup);
    pass.dispatchWorkgroups(s.workgroups[0], s.workgroups[1], s.workgroups[2]);
  }
  pass.end();
}

/** Encodes and submits `steps` as one command buffer (no wait). */
export function submitSteps(gpu: Gpu, steps: readonly Step[], label = "steps"): void {
  const enc = gpu.device.createCommandEncoder({ label });
  encodeSteps(enc, steps);
  gpu.device.queue.submit([enc.finish()]);
}

/** Per-kernel GPU time in milliseconds, summed over the steps of each kernel. */
export interface StepTimes {
  byKernel: Record<string, number>;
  totalMs: number;
}

/**
 * Runs `steps` once with a timestamp pair around each dispatch and returns GPU time per kernel.
 * Needs the timestamp-query feature; returns null without it.
 */
export async function profileSteps(gpu: Gpu, steps: readonly Step[]): Promise<StepTimes | null> {
  if (!gpu.features.timestampQuery || steps.length === 0) return null;
  const count = steps.length * 2;
  const querySet = gpu.device.createQuerySet({ type: "timestamp", count });
  const resolve = gpu.device.createBuffer({
    size: count * 8,
    usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
  });
  const enc = gpu.device.createCommandEncoder({ label: "profile" });
  steps.forEach((s, i) => {
    const pass = enc.beginComputePass({
      label: s.label,
      timestampWrites: {
        querySet,
        beginningOfPassWriteIndex: 2 * i,
        endOfPassWriteIndex: 2 * i + 1,
      },
    });
    pass.setPipeline(s.pipeline);
    pass.setBindGroup(0, s.bindGroup);
    pass.dispatchWorkgroups(s.workgroups[0], s.workgroups[1], s.workgroups[2]);
    pass.end();
  });
  enc.resolveQuerySet(querySet, 0, count, resolve, 0);
  gpu.device.queue.submit([enc.finish()]);
  const [raw] = await gpu.readMany([{ buffer: resolve, bytes: count * 8 }]);
  const ts = new BigUint64Array(raw);
  const byKernel: Record<string, number> = {};
  let totalMs = 0;
  steps.forEach((s, i) => {
    const ms = Number(ts[2 * i + 1] - ts[2 * i]) / 1e6;
    byKernel[s.kernel] = (byKernel[s.kernel] ?? 0) + ms;
    totalMs += ms;
  });
  querySet.destroy();
  resolve.destroy();
  return { byKernel, totalMs };
}

/** Waits until the GPU has finished all submitted work. */
export async function finish(gpu: Gpu): Promise<void> {
  await gpu.device.queue.onSubmittedWorkDone();
  gpu.assertHealthy("submitted work");
}

/** Reads a kernel's .wgsl source that sits beside its TypeScript wrapper. */
export function wgslSource(url: URL): string {
  return Deno.readTextFileSync(url);
}

/** WGSL `const` declarations for compile-time kernel parameters, prepended to a kernel body. */
export function wgslConsts(consts: Record<string, number | boolean>): string {
  return Object.entries(consts).map(([k, v]) => {
    if (typeof v === "boolean") return `const ${k}: bool = ${v};`;
    if (!Number.isInteger(v)) return `const ${k}: f32 = ${fmtF32(v)};`;
    if (v < 0) return `const ${k}: i32 = ${v}i;`;
    return `const ${k}: u32 = ${v}u;`;
  }).join("\n") + "\n";
}

/** A float literal WGSL accepts, exact to f32. */
export function fmtF32(v: number): string {
  const f = Math.fround(v);
  const s = f.toExponential(9);
  return s;
}

/**
 * A 1-D launch of `invocations` threads in workgroups of `workgroupSize`, folded into a 2-D grid
 * when it exceeds the per-dimension workgroup limit. Kernels compute their linear index as
 * `(wid.y * GRID_X + wid.x) * WG + lid.x` and guard it against the real count.
 */
export function grid1d(
  gpu: Gpu,
  invocations: number,
  workgroupSize: number,
): { workgroups: [number, number, number]; gridX: number } {
  const groups = Math.ceil(invocations / workgroupSize);
  const max = gpu.limits.maxComputeWorkgroupsPerDimension;
  if (groups <= max) return { workgroups: [groups, 1, 1], gridX: Math.max(groups, 1) };
  const y = Math.ceil(groups / max);
  const x = Math.ceil(groups / y);
  return { workgroups: [x, y, 1], gridX: x };
}

const sources = new Map<string, string>();

/**
 * One step of a kernel whose .wgsl file sits in kernels/, with compile-time constants prepended,
 * launched over `invocations` threads in a (possibly 2-D folded) grid of `WG`-wide workgroups.
 * The kernel sees the constants plus `WG` and `GRID_X`.
 */
export function launch(
  gpu: Gpu,
  options: {
    label: string;
    /** Base name of kernels/NAME.wgsl. */
    kernel: string;
    /** The kernel body when the wrapper generates it (else kernels/NAME.wgsl is read). */
    source?: string;
    consts: Record<string, number | boolean>;
    buffers: Binding[];
    invocations: number;
    /** Workgroup size, default 64. */
    workgroupSize?: number;
    entryPoint?: string;
  },
): Step {
  const wg = options.workgroupSize ?? 64;
  let body = options.source ?? sources.get(options.kernel);
  if (body === undefined) {
    body = wgslSource(new URL(`./${options.kernel}.wgsl`, import.meta.url));
    sources.set(options.kernel, body);
  }
  const g = grid1d(gpu, options.invocations, wg);
  const code = wgslConsts({ ...options.consts, WG: wg, GRID_X: g.gridX }) + body;
  const pipeline = gpu.pipeline(options.kernel, code, options.entryPoint ?? "main");
  return makeStep(gpu, {
    label: options.label,
    kernel: options.kernel,
    pipeline,
    buffers: options.buffers,
    workgroups: options.invocations === 0 ? [0, 1, 1] : g.workgroups,
  });
}
