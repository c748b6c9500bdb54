/**
 * Compile: a pipeline spec and its model become a Plan — plain data that says which GPU buffers
 * exist (name, bytes, shards) and which kernel steps one iteration runs, in order, with loops
 * over members and micro-batches written as repeat counts.
 *
 * The Plan comes from the code that builds the real engine, run against a planning device that
 * allocates nothing ({@link planningGpu}): what `deno task plan` prints is what `train` allocates.
 *
 * @module
 */
import { type Gpu, type GpuLimits, planningGpu } from "../kernels/runtime.ts";
import type { Step } from "../kernels/program.ts";
import type { Qwen3Config } from "../model/config.ts";
import { qwen3TensorSpecs } from "../model/weights.ts";
import { EsEngine } from "./engine.ts";
import { specEngineOptions } from "./run.ts";
import type { PipelineSpec } from "./spec.ts";

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

/** A kernel dispatch of the plan. */
export interface PlanStep {
  stage: "dataset" | "perturb" | "model" | "fitness" | "update";
  kernel: string;
  label: string;
  workgroups: [number, number, number];
}

/** A block of steps run `repeat` times (members, micro-batches). */
export interface PlanBlock {
  what: string;
  repeat: number;
  steps: (PlanStep | PlanBlock)[];
}

/** The compiled program of one iteration and the memory it needs. */
export interface Plan {
  name: string;
  adapter: string;
  /** Largest bytes of one tensor shard on this adapter. */
  shardBytes: number;
  population: number;
  samplesPerIteration: number;
  microBatch: number;
  maxLen: number;
  buffers: PlanBuffer[];
  /** Tensors of θ split into several shards: name → shard count. */
  sharded: Record<string, number>;
  iteration: PlanBlock;
  bytes: {
    weights: number;
    scratch: number;
    activations: number;
    tokens: number;
    es: number;
    total: number;
  };
}

function roleOf(label: string): PlanBuffer["role"] {
  if (label.endsWith(".shards") || label.endsWith(".chunks")) return "es";
  if (/~(member|theta)/.test(label) || label.startsWith("member.")) return "scratch";
  if (label.startsWith("act.") || label.startsWith("prefix.")) return "activations";
  if (/^(iteration|heldout)\./.test(label)) return "tokens";
  if (label.startsWith("model.") || label.startsWith("lm_head")) return "weights";
  return "es";
}

function stageOf(kernel: string, label: string): PlanStep["stage"] {
  if (kernel === "perturb") return "perturb";
  if (kernel === "es_update" || label.startsWith("lowrank_update.")) return "update";
  if (kernel === "lowrank_factors") return "perturb";
  if (
    ["logsumexp_chunk", "log_likelihood", "accumulate"].includes(kernel) ||
    label.startsWith("lm_head")
  ) {
    return "fitness";
  }
  return "model";
}

function toPlanSteps(steps: readonly Step[]): PlanStep[] {
  return steps.map((s) => ({
    stage: stageOf(s.kernel, s.label),
    kernel: s.kernel,
    label: s.label,
    workgroups: s.workgroups,
  }));
}

/**
 * Compiles a spec: builds the engine for `config` on `gpu` (a planning device by default) and
 * records its buffers and one iteration's steps, for micro-batches of full length.
 */
export async function compile(
  spec: PipelineSpec,
  config: Qwen3Config,
  options: { gpu?: Gpu; adapter?: { adapterName: string; limits: GpuLimits } } = {},
): Promise<Plan> {
  const gpu = options.gpu ??
    planningGpu(options.adapter ?? { adapterName: "planning", limits: DEFAULT_LIMITS });
  const ds = spec.dataset as unknown as { samples_per_iteration: number; holdout: number };
  const M = ds.samples_per_iteration;
  const engineOptions = specEngineOptions(spec, config, Math.max(M, ds.holdout));
  const { population: N, microBatch, maxLen } = engineOptions;
  const before = new Set(gpu.allocations().map((a) => a.label));
  const engine = await EsEngine.create(gpu, engineOptions);
  const full = Math.floor(M / microBatch), rest = M % microBatch;
  // Members run in groups of the engine's member batch; a last, smaller group takes the rest.
  const P = engine.memberBatch;
  const microBlocks = (count: number): PlanBlock[] => {
    const member = (b: number) =>
      toPlanSteps(engine.memberSteps({ batch: b, seqLen: maxLen }, 0, count));
    const blocks: PlanBlock[] = [{
      what: `micro-batch of ${microBatch}×${maxLen}`,
      repeat: full,
      steps: member(microBatch),
    }];
    if (rest > 0) {
      blocks.push({ what: `micro-batch of ${rest}×${maxLen}`, repeat: 1, steps: member(rest) });
    }
    return blocks.filter((b) => b.repeat > 0);
  };
  const prefix = (b: number) => toPlanSteps(engine.prefixSteps({ batch: b, seqLen: maxLen }));
  const prefixBlocks: PlanBlock[] = engine.prefixLayers === 0 ? [] : [
    {
      what: `shared prefix (layers below ${engine.prefixLayers}) on ${microBatch}×${maxLen}`,
      repeat: full,
      steps: prefix(microBatch),
    },
    ...(rest > 0
      ? [{ what: `shared prefix on ${rest}×${maxLen}`, repeat: 1, steps: prefix(rest) }]
      : []),
  ].filter((b) => b.repeat > 0);
  const iteration: PlanBlock = {
    what: "iteration",
    repeat: 1,
    steps: [
      ...prefixBlocks,
      ...[[P, Math.floor(N / P)], [N % P, 1]].filter(([count, repeat]) => count > 0 && repeat > 0)
        .map(([count, repeat]): PlanBlock => ({
          what: count === 1 ? "member" : `${count} members at once`,
          repeat,
          steps: [...toPlanSteps(engine.perturbSteps(count)), ...microBlocks(count)],
        })),
      ...toPlanSteps(engine.updateSteps()),
    ],
  };
  // After the steps: a group's chunk tables are made when its steps are first built.
  const buffers = gpu.allocations().filter((a) => !before.has(a.label))
    .map((a) => ({ name: a.label, bytes: a.bytes, role: roleOf(a.label) }));
  const sum = (role: PlanBuffer["role"]) =>
    buffers.filter((b) => b.role === role).reduce((a, b) => a + b.bytes, 0);
  const sharded: Record<string, number> = {};
  for (const s of qwen3TensorSpecs(config)) {
    const n = engine.theta.get(s.name)!.shards.length;
    if (n > 1) sharded[s.name] = n;
  }
  const plan: Plan = {
    name: spec.name,
    adapter: gpu.adapterName,
    shardBytes: gpu.shardBytes,
    population: N,
    samplesPerIteration: M,
    microBatch,
    maxLen,
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
  if (options.gpu) engine.destroy();
  return plan;
}

/** Dispatches of one pass through a block, loops expanded, by stage and kernel. */
export function countDispatches(block: PlanBlock): Map<string, number> {
  const out = new Map<string, number>();
  const walk = (b: PlanBlock, times: number) => {
    for (const s of b.steps) {
      if ("repeat" in s) walk(s, times * s.repeat);
      else out.set(`${s.stage}/${s.kernel}`, (out.get(`${s.stage}/${s.kernel}`) ?? 0) + times);
    }
  };
  walk(block, block.repeat);
  return out;
}

/** WebGPU's default limits, for planning with no adapter at hand. */
export const DEFAULT_LIMITS: GpuLimits = {
  maxStorageBufferBindingSize: 128 << 20,
  maxBufferSize: 256 << 20,
  maxComputeWorkgroupsPerDimension: 65535,
  maxComputeInvocationsPerWorkgroup: 256,
  maxComputeWorkgroupStorageSize: 16384,
  maxStorageBuffersPerShaderStage: 8,
  minStorageBufferOffsetAlignment: 256,
};
