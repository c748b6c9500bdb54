/**
 * The memory report of EA4LLM's Figure 3: device bytes of ES training, from the same planner that
 * allocates at run time, beside the bytes of gradient training with Adam in mixed precision.
 *
 * Legend: P = parameters, L = layers, H = hidden, I = intermediate, NH/NKV = heads/kv heads,
 * d = head_dim, V = vocab, B = micro-batch, T = tokens per sample.
 *
 * Adam, mixed precision (the usual recipe: bf16 weights and gradients, f32 master weights and two
 * f32 moments): 2P + 2P + 4P + 4P + 4P = 16P bytes, plus the activations backprop keeps. Those
 * are counted per token and layer in bf16, assuming flash attention (no T×T scores are kept):
 * the inputs of every matmul and nonlinearity —
 *   x and rmsnorm(x) (2H), q and k before and after norm+RoPE (2·NH·d + 2·NKV·d), v (NKV·d),
 *   the attention output (NH·d), the residual and its norm (2H), gate, up and silu(gate)·up (3I)
 * = 4H + 3·NH·d + 3·NKV·d + 3I elements, plus the final norm (H) and the f32 logits of the loss
 * and their gradient (2·V·4 bytes) per token.
 *
 * @module
 */
import type { Qwen3Config } from "../model/config.ts";
import { paramCount } from "../model/presets.ts";
import { compile, type Plan } from "./compile.ts";
import type { PipelineSpec } from "./spec.ts";
import type { StorageDtype } from "../kernels/tensor.ts";

/** Bytes of Adam mixed-precision training of `config` on micro-batches of B × T tokens. */
export function adamBytes(
  config: Qwen3Config,
  o: { microBatch: number; maxLen: number },
): { states: number; activations: number; total: number } {
  const c = config, P = paramCount(config), tokens = o.microBatch * o.maxLen;
  const states = 16 * P;
  const perLayer = 4 * c.hiddenSize + 3 * c.numHeads * c.headDim + 3 * c.numKvHeads * c.headDim +
    3 * c.intermediateSize;
  const activations = tokens * (2 * (c.numLayers * perLayer + c.hiddenSize) + 2 * 4 * c.vocabSize);
  return { states, activations, total: states + activations };
}

/** One row of the memory report. */
export interface MemoryRow {
  name: string;
  parameters: number;
  /** ES bytes as esflow plans them (f32 θ, the member's scratch, activations, tokens). */
  es: number;
  es_weights: number;
  es_activations: number;
  /** ES bytes with θ stored in bf16, planned the same way; null where bf16 cannot run. */
  es_bf16: number | null;
  adam: number;
  /** adam / es and adam / es_bf16. */
  ratio: number;
  ratio_bf16: number | null;
}

/** The spec with θ stored as `storage` (the model stage's `storage` key). */
export function withStorage(spec: PipelineSpec, storage: StorageDtype): PipelineSpec {
  return { ...spec, model: { ...spec.model, storage } };
}

/**
 * The report row of a pipeline: its ES bytes planned with f32 θ and with bf16 θ (full-rank
 * pipelines; low rank reads θ directly and stays f32), beside Adam's.
 */
export async function memoryReport(
  spec: PipelineSpec,
  config: Qwen3Config,
  options: Parameters<typeof compile>[2] = {},
): Promise<MemoryRow> {
  const plan = await compile(withStorage(spec, "f32"), config, options);
  const lowRank = (spec.perturb as { rank?: unknown }).rank !== undefined;
  const bf16 = lowRank ? null : await compile(withStorage(spec, "bf16"), config, options);
  return memoryRow(plan, config, bf16);
}

/** The report row of compiled plans: f32 θ, and bf16 θ when there is one. */
export function memoryRow(plan: Plan, config: Qwen3Config, bf16: Plan | null = null): MemoryRow {
  const adam = adamBytes(config, { microBatch: plan.microBatch, maxLen: plan.maxLen }).total;
  const esBf16 = bf16 ? bf16.bytes.total : null;
  return {
    name: plan.name,
    parameters: paramCount(config),
    es: plan.bytes.total,
    es_weights: plan.bytes.weights + plan.bytes.scratch,
    es_activations: plan.bytes.activations,
    es_bf16: esBf16,
    adam,
    ratio: adam / plan.bytes.total,
    ratio_bf16: esBf16 === null ? null : adam / esBf16,
  };
}
