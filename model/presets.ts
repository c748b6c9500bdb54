/**
 * Named Qwen3 configurations: the paper's six sizes (EA4LLM appendix table) and tiny sizes that
 * train on a CPU adapter in minutes.
 *
 * The paper's table differs from the released Qwen3 checkpoints in places: its 0.5B is not
 * Qwen3-0.6B (24 layers, 8 heads, intermediate 4096), its 4B has hidden 4096 where Qwen3-4B has
 * 2560, and its 32B has hidden 8192 where Qwen3-32B has 5120. As written, the 4B row has 6.4B
 * parameters and the 32B row 52B (see {@link paramCount}). The presets follow the table, since
 * they exist to reproduce the paper's runs.
 *
 * @module
 */
import { UserError } from "../errors.ts";
import type { Qwen3Config } from "./config.ts";
import { qwen3TensorSpecs } from "./weights.ts";

/** Qwen3's vocabulary size: 151,669 ids in use, padded to a multiple of 128. */
export const QWEN3_VOCAB_SIZE = 151936;

/** One row of the paper's appendix table. */
function paperSize(row: {
  layers: number;
  hidden: number;
  heads: number;
  kvHeads: number;
  intermediate: number;
  maxPos: number;
  tie: boolean;
}): Qwen3Config {
  return {
    vocabSize: QWEN3_VOCAB_SIZE,
    hiddenSize: row.hidden,
    intermediateSize: row.intermediate,
    numLayers: row.layers,
    numHeads: row.heads,
    numKvHeads: row.kvHeads,
    headDim: 128,
    maxPositionEmbeddings: row.maxPos,
    rmsNormEps: 1e-6,
    ropeTheta: 1e6,
    tieWordEmbeddings: row.tie,
    attentionBias: false,
    initializerRange: 0.02,
    // Qwen3's <|endoftext|> and <|im_end|>.
    bosTokenId: 151643,
    eosTokenId: 151645,
    torchDtype: "bfloat16",
  };
}

/** A byte-level (vocab 256) tiny model for CPU runs and tests. */
function tinySize(row: {
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
}): Qwen3Config {
  return {
    vocabSize: 256,
    hiddenSize: row.hidden,
    intermediateSize: row.intermediate,
    numLayers: row.layers,
    numHeads: row.heads,
    numKvHeads: row.kvHeads,
    headDim: row.headDim,
    maxPositionEmbeddings: 1024,
    rmsNormEps: 1e-6,
    ropeTheta: 10000,
    tieWordEmbeddings: true,
    attentionBias: false,
    initializerRange: 0.02,
    torchDtype: "float32",
  };
}

const TINY = tinySize({
  hidden: 128,
  intermediate: 384,
  layers: 4,
  heads: 4,
  kvHeads: 2,
  headDim: 32,
});

const PRESETS: Readonly<Record<string, Qwen3Config>> = {
  // The paper's appendix table (layers, hidden, heads, kv heads, intermediate, max pos, tie).
  "qwen3-0.5b": paperSize({
    layers: 24,
    hidden: 1024,
    heads: 8,
    kvHeads: 4,
    intermediate: 4096,
    maxPos: 32768,
    tie: true,
  }),
  "qwen3-1.7b": paperSize({
    layers: 28,
    hidden: 2048,
    heads: 16,
    kvHeads: 8,
    intermediate: 6144,
    maxPos: 32768,
    tie: true,
  }),
  "qwen3-4b": paperSize({
    layers: 36,
    hidden: 4096,
    heads: 32,
    kvHeads: 8,
    intermediate: 9728,
    maxPos: 32768,
    tie: true,
  }),
  "qwen3-8b": paperSize({
    layers: 36,
    hidden: 4096,
    heads: 32,
    kvHeads: 8,
    intermediate: 12288,
    maxPos: 32768,
    tie: false,
  }),
  "qwen3-14b": paperSize({
    layers: 40,
    hidden: 5120,
    heads: 40,
    kvHeads: 8,
    intermediate: 17408,
    maxPos: 32768,
    tie: false,
  }),
  "qwen3-32b": paperSize({
    layers: 64,
    hidden: 8192,
    heads: 64,
    kvHeads: 8,
    intermediate: 25600,
    maxPos: 40960,
    tie: false,
  }),
  // CPU sizes, byte-level. tiny: ~0.8M parameters.
  "tiny": TINY,
  // micro: GQA, a tied head, and head_dim 32 ≠ hidden/heads (16), as Qwen3-0.6B has, in
  // ~0.1M parameters: the smallest model that exercises every shape rule.
  "micro": tinySize({
    hidden: 64,
    intermediate: 128,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    headDim: 32,
  }),
  // tiny with the real Qwen3 vocabulary: exercises the sharded, vocab-chunked LM head.
  "tiny-qwen3vocab": {
    ...TINY,
    vocabSize: QWEN3_VOCAB_SIZE,
    bosTokenId: 151643,
    eosTokenId: 151645,
  },
};

/** The preset names, in table order. */
export const PRESET_NAMES: readonly string[] = Object.keys(PRESETS);

/** A copy of the named preset; an unknown name is a {@link UserError} listing the valid ones. */
export function getPreset(name: string): Qwen3Config {
  const preset = Object.hasOwn(PRESETS, name) ? PRESETS[name] : undefined;
  if (!preset) {
    throw new UserError(
      `model preset "${name}" does not exist; use one of ${PRESET_NAMES.join(", ")}`,
    );
  }
  return { ...preset };
}

/**
 * Parameters of a model with this config, each tensor counted once (a tied LM head is the
 * embedding, not a second V×H matrix).
 */
export function paramCount(cfg: Qwen3Config): number {
  let total = 0;
  for (const { shape } of qwen3TensorSpecs(cfg)) total += shape.reduce((a, b) => a * b, 1);
  return total;
}
