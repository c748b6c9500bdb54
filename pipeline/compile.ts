/**
 * Compile: a pipeline spec and its model become a Plan — the program one iteration runs
 * (kernels/device.ts: dispatches, copies, and blocks that repeat over member groups and
 * micro-batches) and the buffers it binds, with their bytes and what they hold.
 *
 * The program is the value a run executes: the engine builds it with the code `train` uses,
 * each op's stage and role and each buffer's purpose set where they are made. On a planning
 * device ({@link planDevice}) the buffers are declared and nothing is allocated or run, so
 * `deno task plan` shows the 32B preset on a laptop; on a real device the same call allocates
 * what it lists (tests/plan_test.ts holds the two equal, and the program to the one a training
 * iteration executes).
 *
 * @module
 */
import {
  type Backend,
  DEFAULT_LIMITS,
  type Device,
  type DeviceLimits,
  type Dispatch,
  expand,
  planDevice,
  type Program,
  staged,
} from "../kernels/device.ts";
import type { Qwen3Config } from "../model/config.ts";
import { qwen3TensorSpecs } from "../model/weights.ts";
import { EsEngine } from "./engine.ts";
import { specEngineOptions } from "./engine_options.ts";
import { createStage, type PipelineSpec } from "./spec.ts";

// Planning callers name the limits from here (they moved to kernels/device.ts).
export { DEFAULT_LIMITS };

/** A device buffer of the plan. */
export interface PlanBuffer {
  name: string;
  bytes: number;
  /**
   * What it holds: θ, the member's scratch (its perturbed vectors and the chunk buffers its
   * matrices are formed in, a whole perturbed copy with scratch: copy, or low-rank its vectors and
   * factors), activations, tokens, or ES bookkeeping.
   */
  role: "weights" | "scratch" | "activations" | "tokens" | "es";
}

/** The device a plan is made for, when it is not a live one. */
export interface PlanTarget {
  backend: Backend;
  name: string;
  limits: DeviceLimits;
}

/** The compiled program of one iteration and the memory it needs. */
export interface Plan {
  name: string;
  /** The backend the plan was made for. */
  backend: Backend;
  /** The device: an adapter's name, or the CPU. */
  adapter: string;
  /** Largest bytes of one tensor shard on this device. */
  shardBytes: number;
  population: number;
  samplesPerIteration: number;
  microBatch: number;
  maxLen: number;
  /** Members evaluated at once (fitness.member_batch as the engine resolved it). */
  memberBatch: number;
  buffers: PlanBuffer[];
  /** Tensors of θ split into several shards: name → shard count. */
  sharded: Record<string, number>;
  /** One iteration with full-length micro-batches: the evaluation, then the update. */
  iteration: Program;
  bytes: {
    weights: number;
    scratch: number;
    activations: number;
    tokens: number;
    es: number;
    total: number;
  };
}

/** The iteration's micro-batches as a run packs M samples of full length. */
export function fullLayout(
  o: { samples: number; microBatch: number; maxLen: number },
): { offset: number; batch: number; seqLen: number; scored: number }[] {
  const layout = [];
  for (let at = 0; at < o.samples; at += o.microBatch) {
    const batch = Math.min(o.microBatch, o.samples - at);
    layout.push({ offset: at * o.maxLen, batch, seqLen: o.maxLen, scored: 0 });
  }
  return layout;
}

/**
 * Compiles a spec: builds the engine for `config` on `device` (a planning device for `target`
 * by default, WebGPU's default limits without one) and returns its buffers and one iteration's
 * program for micro-batches of full length. A live device's buffers are freed again.
 */
export async function compile(
  spec: PipelineSpec,
  config: Qwen3Config,
  options: { device?: Device; target?: PlanTarget } = {},
): Promise<Plan> {
  const device = options.device ?? planDevice(
    options.target ?? { backend: "webgpu", name: "planning", limits: DEFAULT_LIMITS },
  );
  const ds = createStage(spec, "dataset");
  const M = ds.samplesPerIteration;
  const engineOptions = specEngineOptions(spec, config, Math.max(M, ds.holdout));
  const { population: N, microBatch, maxLen } = engineOptions;
  const before = new Set(device.allocations().map((a) => a.label));
  const engine = await EsEngine.create(device, engineOptions);
  const iteration: Program = [
    ...engine.evaluationProgram(fullLayout({ samples: M, microBatch, maxLen }), {
      heldOut: false,
    }),
    ...staged("update", engine.updateSteps()),
  ];
  // After the program: a group's chunk tables are made when its steps are first built.
  const buffers = device.allocations().filter((a) => !before.has(a.label))
    .map((a) => ({ name: a.label, bytes: a.bytes, role: a.purpose }));
  const sum = (role: PlanBuffer["role"]) =>
    buffers.filter((b) => b.role === role).reduce((a, b) => a + b.bytes, 0);
  const sharded: Record<string, number> = {};
  for (const s of qwen3TensorSpecs(config)) {
    const n = engine.theta.get(s.name)!.shards.length;
    if (n > 1) sharded[s.name] = n;
  }
  const plan: Plan = {
    name: spec.name,
    backend: device.backend,
    adapter: device.name,
    shardBytes: device.shardBytes,
    population: N,
    samplesPerIteration: M,
    microBatch,
    maxLen,
    memberBatch: engine.memberBatch,
    buffers,
    sharded,
    iteration,
    bytes: {
      weights: sum("weights"),
      scratch: sum("scratch"),
      activations: sum("activations"),
      tokens: sum("tokens"),
      es: sum("es"),
      total: buffers.reduce((a, b) => a + b.bytes, 0),
    },
  };
  if (device.executes) engine.destroy();
  return plan;
}

/** Dispatches of one pass through a program, blocks expanded, by stage and kernel. */
export function countDispatches(program: Program): Map<string, number> {
  const out = new Map<string, number>();
  for (const op of expand(program)) {
    if (op.op !== "dispatch") continue;
    const key = `${op.stage ?? "?"}/${op.kernel}`;
    out.set(key, (out.get(key) ?? 0) + 1);
  }
  return out;
}

/** The dispatches of a program in execution order (blocks expanded). */
export function dispatches(program: Program): Dispatch[] {
  return [...expand(program)].filter((op): op is Dispatch => op.op === "dispatch");
}

/**
 * A program as plain JSON: buffers by label, WGSL sources left out (they are made from the
 * kernel and its constants).
 */
export function programJson(program: Program): unknown {
  return JSON.parse(JSON.stringify(program, (key, v) => {
    if (key === "wgsl") return undefined;
    if (v && typeof v === "object" && "purpose" in v && "size" in v && "label" in v) {
      return `${v.label}`;
    }
    return v;
  }));
}
