/**
 * Building ops: the unit of device work (kernels/device.ts). A {@link Dispatch} is one launch of
 * one kernel with its constants and bindings decided, so a program built once runs every
 * iteration with no rebuilding: on WebGPU at ~20 µs a dispatch (its pipeline and bind group are
 * made the first time it is encoded), on the CPU as one native call.
 *
 * Tests: tests/runtime_test.ts, tests/program_test.ts.
 *
 * @module
 */
import type { Binding, Device, Dispatch, Op, Program, Stage, WgslSource } from "./device.ts";
import type { Gpu } from "./runtime.ts";

export type { Binding, Dispatch, Op, Program } from "./device.ts";

/** A step: one op of a program (kept as the name the kernel wrappers return). */
export type Step = Op;

/** Options of {@link dispatch}. */
export interface DispatchOptions {
  label: string;
  kernel: string;
  variant?: string;
  consts: Record<string, number | boolean>;
  bindings: Binding[];
  workgroups: [number, number, number] | number;
  wgsl: WgslSource;
  /** The CPU twin of a kernel the native library lacks (kernels/device.ts Dispatch.cpu). */
  cpu?: (bindings: DataView[]) => void;
  stage?: Stage;
  role?: string;
}

/** A dispatch of `kernel`, its grid checked against the device's per-dimension limit. */
export function dispatch(device: Device, o: DispatchOptions): Dispatch {
  const wg = typeof o.workgroups === "number"
    ? [o.workgroups, 1, 1] as [number, number, number]
    : o.workgroups;
  const max = device.limits.maxComputeWorkgroupsPerDimension;
  if (wg.some((w) => w > max)) {
    throw new Error(`step ${o.label}: workgroups ${wg} exceed the per-dimension limit ${max}`);
  }
  const d: Dispatch = {
    op: "dispatch",
    label: o.label,
    kernel: o.kernel,
    consts: o.consts,
    bindings: o.bindings,
    workgroups: wg,
    wgsl: o.wgsl,
  };
  if (o.variant !== undefined) d.variant = o.variant;
  if (o.stage !== undefined) d.stage = o.stage;
  if (o.role !== undefined) d.role = o.role;
  if (o.cpu !== undefined) d.cpu = o.cpu;
  return d;
}

/** Runs `program` on `device` (queued on WebGPU, at once on the CPU). */
export function submitSteps(device: Device, program: Program, label = "steps"): void {
  device.run(program, label);
}

/** Per-kernel GPU time in milliseconds, summed over the steps of each kernel. */
export interface StepTimes {
  byKernel: Record<string, number>;
  totalMs: number;
}

/**
 * Runs the dispatches of `program` once on a WebGPU device with a timestamp pair around each and
 * returns GPU time per kernel. Needs the timestamp-query feature; returns null without it.
 */
export async function profileSteps(gpu: Gpu, program: Program): Promise<StepTimes | null> {
  const steps = program.filter((s): s is Dispatch => s.op === "dispatch");
  if (!gpu.features.timestampQuery || steps.length === 0) return null;
  const count = steps.length * 2;
  const querySet = gpu.device.createQuerySet({ type: "timestamp", count });
  const resolve = gpu.device.createBuffer({
    size: count * 8,
    usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
  });
  const enc = gpu.device.createCommandEncoder({ label: "profile" });
  steps.forEach((s, i) => {
    const e = gpu.encoded(s);
    const pass = enc.beginComputePass({
      label: s.label,
      timestampWrites: {
        querySet,
        beginningOfPassWriteIndex: 2 * i,
        endOfPassWriteIndex: 2 * i + 1,
      },
    });
    pass.setPipeline(e.pipeline);
    pass.setBindGroup(0, e.bindGroup);
    pass.dispatchWorkgroups(s.workgroups[0], s.workgroups[1], s.workgroups[2]);
    pass.end();
  });
  const staging = gpu.device.createBuffer({
    size: count * 8,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  enc.resolveQuerySet(querySet, 0, count, resolve, 0);
  enc.copyBufferToBuffer(resolve, 0, staging, 0, count * 8);
  gpu.device.queue.submit([enc.finish()]);
  await gpu.checkPipelines();
  await staging.mapAsync(GPUMapMode.READ);
  const ts = new BigUint64Array(staging.getMappedRange().slice(0));
  staging.unmap();
  const byKernel: Record<string, number> = {};
  let totalMs = 0;
  steps.forEach((s, i) => {
    const ms = Number(ts[2 * i + 1] - ts[2 * i]) / 1e6;
    byKernel[s.kernel] = (byKernel[s.kernel] ?? 0) + ms;
    totalMs += ms;
  });
  querySet.destroy();
  resolve.destroy();
  staging.destroy();
  return { byKernel, totalMs };
}

/** Waits until the device has finished all submitted work. */
export async function finish(device: Device): Promise<void> {
  await device.finish();
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
  device: Device,
  invocations: number,
  workgroupSize: number,
): { workgroups: [number, number, number]; gridX: number } {
  const groups = Math.ceil(invocations / workgroupSize);
  const max = device.limits.maxComputeWorkgroupsPerDimension;
  if (groups <= max) return { workgroups: [groups, 1, 1], gridX: Math.max(groups, 1) };
  const y = Math.ceil(groups / max);
  const x = Math.ceil(groups / y);
  return { workgroups: [x, y, 1], gridX: x };
}

const sources = new Map<string, string>();

/** The text of kernels/NAME.wgsl, read once. */
export function kernelSource(kernel: string): string {
  let body = sources.get(kernel);
  if (body === undefined) {
    body = wgslSource(new URL(`./${kernel}.wgsl`, import.meta.url));
    sources.set(kernel, body);
  }
  return body;
}

/**
 * `template`, the text of kernels/`file`, with each `//@marker` line replaced by the lines
 * generated for it, indented as the marker was (none: the line is left empty). A marker the text
 * lacks is an error naming the file: the generator and the kernel have drifted apart.
 */
export function fillMarkers(
  file: string,
  template: string,
  parts: Record<string, readonly string[]>,
): string {
  let src = template;
  for (const [marker, lines] of Object.entries(parts)) {
    const re = new RegExp(`^([ \\t]*)//@${marker}$`, "m");
    const found = re.exec(src);
    if (!found) throw new Error(`kernels/${file} lost its //@${marker} marker`);
    src = src.replace(re, () => lines.map((l) => found[1] + l).join("\n"));
  }
  return src;
}

/**
 * One dispatch of a kernel whose .wgsl file sits in kernels/, with compile-time constants
 * prepended, launched over `invocations` threads in a (possibly 2-D folded) grid of `WG`-wide
 * workgroups. The kernel sees the constants plus `WG` and `GRID_X`; the grid's z is 1, so the
 * workgroup id's z is 0.
 *
 * Constant loop bounds: lavapipe's NIR unrolls a loop of up to 32 constant iterations, and a
 * kernel whose unrolled body is a row of gathers then takes it about a second to compile where
 * the loop takes a twentieth (rmsnorm.wgsl at D = 128, cold: 1057 ms against 66 ms), at no
 * measurable gain in speed for a kernel this small. Such kernels bound their loops by
 * `max(BOUND, wid.z)`: the same number, which the compiler cannot see through.
 */
export function launch(
  device: Device,
  options: {
    label: string;
    /** Base name of kernels/NAME.wgsl. */
    kernel: string;
    /** The kernel body when the wrapper generates it (else kernels/NAME.wgsl is read). */
    source?: () => string;
    consts: Record<string, number | boolean>;
    buffers: Binding[];
    invocations: number;
    /** Workgroup size, default 64. */
    workgroupSize?: number;
    entryPoint?: string;
    stage?: Stage;
    role?: string;
  },
): Dispatch {
  const wg = options.workgroupSize ?? 64;
  const g = grid1d(device, options.invocations, wg);
  const consts = { ...options.consts, WG: wg, GRID_X: g.gridX };
  const body = options.source ?? (() => kernelSource(options.kernel));
  return dispatch(device, {
    label: options.label,
    kernel: options.kernel,
    consts,
    bindings: options.buffers,
    workgroups: options.invocations === 0 ? [0, 1, 1] : g.workgroups,
    wgsl: {
      label: options.kernel,
      code: () => wgslConsts(consts) + body(),
      entryPoint: options.entryPoint,
    },
    stage: options.stage,
    role: options.role,
  });
}
