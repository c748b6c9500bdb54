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
import type { Plan } from "./compile.ts";

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
  /** ES bytes with θ stored in bf16 (2 bytes a parameter instead of 4). */
  es_bf16: number;
  adam: number;
  /** adam / es and adam / es_bf16. */
  ratio: number;
  ratio_bf16: number;
}

/** The report row of a compiled plan. */
export function memoryRow(plan: Plan, config: Qwen3Config): MemoryRow {
  const adam = adamBytes(config, { microBatch: plan.microBatch, maxLen: plan.maxLen }).total;
  const f32Weights = plan.bytes.weights + plan.bytes.scratch;
  // bf16 storage halves θ; the member's scratch stays f32.
  const esBf16 = plan.bytes.total - plan.bytes.weights / 2;
  return {
    name: plan.name,
    parameters: paramCount(config),
    es: plan.bytes.total,
    es_weights: f32Weights,
    es_activations: plan.bytes.activations,
    es_bf16: esBf16,
    adam,
    ratio: adam / plan.bytes.total,
    ratio_bf16: adam / esBf16,
  };
}
