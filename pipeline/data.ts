/**
 * The data side of an ES iteration: the held-out split, each iteration's subset, tokenization,
 * micro-batches and the packed upload. Every function here is a pure, deterministic function of
 * its arguments, so every process of a distributed run, and a resumed run, computes the same
 * samples from the run seed and the iteration number alone (design decision 6).
 *
 * How the pieces fit (M = samples per iteration, B = micro-batch, T = tokens of a micro-batch):
 * ```
 * texts                         the dataset stage's samples, string[]
 *  → tokenizeSamples            tokens[i] (≤ maxLen ids, ≥ 2 ids), origin[i] = index into texts
 *  → splitHoldout               train, holdout: sorted indices into tokens, fixed by the seed
 *  → subsetSamples              each iteration: M indices into tokens, drawn from train
 *  → iterationBatches           ⌈M/B⌉ TokenBatch, each right-padded to its own longest row
 *  → packBatches                ids, mask, target (all micro-batches, one upload) and their layout
 * heldOutBatches                the held-out samples, micro-batched once for the whole run
 * ```
 *
 * Randomness. Draws use Philox4x32-10 (kernels/philox.ts) keyed by the run seed, the generator
 * the perturbation noise uses, with the counter (block, stream, 0, iteration). The noise puts a
 * tensor id in the second word; a model has a few thousand tensors at most, so the stream tags
 * below (0xDA7A…) never meet a noise counter and the data draws share no bits with ε.
 *
 * @module
 */
import type { TokenBatch } from "../model/forward.ts";
import type { Tokenizer } from "../tokenizers/mod.ts";
import { philox4x32_10, type Seed, seedKey } from "../kernels/philox.ts";
import { NO_TARGET, scoredTargets } from "../kernels/log_likelihood.ts";
import { padBatch } from "./batch.ts";

/** Philox stream tag (counter word 1) of the per-iteration subset draw. */
const SUBSET_STREAM = 0xDA7A0001;
/** Philox stream tag (counter word 1) of the held-out split, drawn once per run. */
const HOLDOUT_STREAM = 0xDA7A0002;

const TWO_32 = 2 ** 32;

/** Throws a RangeError unless `v` is an integer in [min, max]. */
function checkInt(name: string, v: number, min: number, max = Number.MAX_SAFE_INTEGER): void {
  if (!Number.isInteger(v) || v < min || v > max) {
    throw new RangeError(`${name} ${v} must be an integer in [${min}, ${max}]`);
  }
}

/**
 * A reader of the u32 words of Philox4x32-10((block, stream, 0, iteration), seedKey(seed)),
 * block = 0, 1, 2, … in order: one stream of random words per (seed, stream, iteration).
 */
function philoxWords(seed: Seed, stream: number, iteration: number): () => number {
  const key = seedKey(seed);
  const counter = [0, stream, 0, iteration];
  const words = new Uint32Array(4);
  let used = 4;
  return () => {
    if (used === 4) {
      philox4x32_10(counter, key, words);
      counter[0]++;
      used = 0;
    }
    return words[used++];
  };
}

/**
 * A uniform integer in [0, m), 1 ≤ m ≤ 2^32, from u32 words. `w % m` alone favours small
 * values whenever m does not divide 2^32, so words at or above the largest multiple of m are
 * rejected and redrawn (fewer than half are, so this takes under two words on average).
 */
function uniformBelow(next: () => number, m: number): number {
  const limit = TWO_32 - (TWO_32 % m);
  for (;;) {
    const w = next();
    if (w < limit) return w % m;
  }
}

/**
 * The first k entries of a uniformly random permutation of 0..n−1: a partial Fisher–Yates
 * shuffle (Knuth, TAOCP vol. 2, Algorithm 3.4.2P, stopped after k swaps). The permuted array is
 * virtual: only the positions a swap moved are stored, so a draw costs O(k) time and memory
 * however large n is.
 */
function partialShuffle(n: number, k: number, next: () => number): number[] {
  const moved = new Map<number, number>();
  const out = new Array<number>(k);
  for (let i = 0; i < k; i++) {
    const j = i + uniformBelow(next, n - i);
    const atI = moved.get(i) ?? i, atJ = moved.get(j) ?? j;
    out[i] = atJ;
    // Position i is never read again (later swaps pick j ≥ i+1), so only j needs the old value.
    moved.set(j, atI);
    moved.delete(i);
  }
  return out;
}

/** Ascending numeric sort (Array.prototype.sort compares as strings by default). */
function ascending(xs: number[]): number[] {
  return xs.sort((a, b) => a - b);
}

/**
 * The fixed held-out split of `n` samples: `holdout` indices drawn uniformly without replacement
 * from the run seed alone, and the rest for training. Both parts are sorted ascending, disjoint,
 * and together cover 0..n−1. The split never depends on the iteration, so the evaluation loss is
 * measured on the same samples throughout a run and across resumes.
 */
export function splitHoldout(
  n: number,
  options: { seed: Seed; holdout: number },
): { train: number[]; holdout: number[] } {
  checkInt("sample count", n, 0, 0xFFFFFFFF);
  checkInt("holdout", options.holdout, 0, n);
  const held = ascending(
    partialShuffle(n, options.holdout, philoxWords(options.seed, HOLDOUT_STREAM, 0)),
  );
  const train: number[] = [];
  let h = 0;
  for (let i = 0; i < n; i++) {
    if (h < held.length && held[h] === i) h++;
    else train.push(i);
  }
  return { train, holdout: held };
}

/**
 * Iteration `iteration`'s subset: `size` distinct positions into a train list of `trainCount`
 * samples, uniform over all size-subsets (EA4LLM §3: each iteration draws M samples uniformly
 * without replacement, and every member scores the same ones). The draw is a function of
 * (seed, iteration) alone, so every process of a run draws the same positions without talking.
 * Sorted ascending. Throws a RangeError when size > trainCount.
 */
export function subsetIndices(
  trainCount: number,
  options: { seed: Seed; iteration: number; size: number },
): number[] {
  checkInt("train count", trainCount, 0, 0xFFFFFFFF);
  checkInt("iteration", options.iteration, 0, 0xFFFFFFFF);
  if (!Number.isInteger(options.size) || options.size < 0 || options.size > trainCount) {
    throw new RangeError(
      `subset size ${options.size} must be an integer in [0, ${trainCount}] (the training samples)`,
    );
  }
  const next = philoxWords(options.seed, SUBSET_STREAM, options.iteration);
  return ascending(partialShuffle(trainCount, options.size, next));
}

/**
 * Iteration `iteration`'s samples as indices into the tokenized corpus: {@link subsetIndices}
 * over `train` (from {@link splitHoldout}), mapped through it. Ascending, since train is.
 */
export function subsetSamples(
  train: readonly number[],
  options: { seed: Seed; iteration: number; size: number },
): number[] {
  return subsetIndices(train.length, options).map((p) => train[p]);
}

/**
 * Encodes each text and keeps its first `maxLen` tokens. A sample needs at least 2 tokens to be
 * scored (R predicts token t+1 from tokens ≤ t, so one token has no target and R would be 0/0):
 * shorter samples are dropped here, once, rather than poisoning a fitness mean later.
 * Returns the kept samples' tokens and `origin`, where origin[i] is the index in `texts` of
 * tokens[i] (ascending; equal to i when nothing was dropped).
 */
export function tokenizeSamples(
  texts: readonly string[],
  tokenizer: Pick<Tokenizer, "encode">,
  options: { maxLen: number },
): { tokens: number[][]; origin: number[] } {
  checkInt("maxLen", options.maxLen, 2);
  const tokens: number[][] = [], origin: number[] = [];
  texts.forEach((text, i) => {
    const ids = tokenizer.encode(text);
    if (ids.length < 2) return;
    tokens.push(ids.length > options.maxLen ? ids.slice(0, options.maxLen) : ids);
    origin.push(i);
  });
  return { tokens, origin };
}

/**
 * The samples `indices` (into `tokens`) in micro-batches of at most `microBatch` rows, in the
 * order given. Each micro-batch is right-padded with `padId` to its own longest row, not to
 * maxLen, so no column is all padding. attention_mask is 1 on real tokens and 0 on padding.
 */
export function iterationBatches(
  tokens: readonly (readonly number[])[],
  indices: readonly number[],
  options: { microBatch: number; padId: number },
): TokenBatch[] {
  checkInt("microBatch", options.microBatch, 1);
  const out: TokenBatch[] = [];
  for (let start = 0; start < indices.length; start += options.microBatch) {
    const rows = indices.slice(start, start + options.microBatch).map((i) => {
      if (!Number.isInteger(i) || i < 0 || i >= tokens.length) {
        throw new RangeError(`sample index ${i} is outside 0..${tokens.length - 1}`);
      }
      return tokens[i];
    });
    out.push(padBatch(rows, { padId: options.padId }));
  }
  return out;
}

/**
 * The held-out samples in micro-batches for the evaluation loss, built once per run. They are
 * ordered by token count (ties by index) before batching: the loss is a per-token mean, which
 * does not depend on the order, and rows of similar length waste the least padding.
 */
export function heldOutBatches(
  tokens: readonly (readonly number[])[],
  holdout: readonly number[],
  options: { microBatch: number; padId: number },
): TokenBatch[] {
  const byLength = [...holdout].sort((a, b) =>
    (tokens[a]?.length ?? 0) - (tokens[b]?.length ?? 0) || a - b
  );
  return iterationBatches(tokens, byLength, options);
}

/** Where one micro-batch lies in {@link PackedBatches}. */
export interface PackedLayout {
  /** Element (not byte) offset of the micro-batch's first token in ids, mask and target. */
  offset: number;
  /** Rows B of the micro-batch. */
  batch: number;
  /** Tokens T per row (its longest row). */
  seqLen: number;
  /** Positions with a target (≠ NO_TARGET): the tokens the fitness scores. */
  scored: number;
}

/** All micro-batches of an iteration in three flat u32 arrays, for one upload. */
export interface PackedBatches {
  /** Token ids, micro-batch k's (B, T) block row-major at layout[k].offset. */
  ids: Uint32Array;
  /** Attention mask (1 token, 0 padding), laid out as ids. */
  mask: Uint32Array;
  /** Next-token targets, laid out as ids; NO_TARGET (0xffffffff) where nothing is scored. */
  target: Uint32Array;
  /** One entry per micro-batch, in order. */
  layout: PackedLayout[];
}

/**
 * Packs micro-batches back to back so one upload carries the whole iteration (each
 * CPU↔GPU round trip costs ~11 ms on lavapipe). For micro-batch k with rows B and length T,
 * element b·T+t at layout[k].offset holds ids[b][t], mask[b][t] and the target of
 * {@link scoredTargets}: ids[b][t+1] when mask[b][t+1] = 1, else NO_TARGET (the mask of the
 * target position decides, as the paper's R).
 */
export function packBatches(batches: readonly TokenBatch[]): PackedBatches {
  const layout: PackedLayout[] = [];
  let total = 0;
  for (const { inputIds } of batches) {
    const seqLen = inputIds.reduce((m, r) => Math.max(m, r.length), 0);
    layout.push({ offset: total, batch: inputIds.length, seqLen, scored: 0 });
    total += inputIds.length * seqLen;
  }
  const ids = new Uint32Array(total), mask = new Uint32Array(total);
  const target = new Uint32Array(total);
  batches.forEach(({ inputIds, attentionMask }, k) => {
    const place = layout[k];
    inputIds.forEach((row, b) => {
      if (row.length !== place.seqLen || attentionMask[b]?.length !== place.seqLen) {
        throw new RangeError(
          `micro-batch ${k} row ${b}: ids and mask must both have the batch's ${place.seqLen} columns`,
        );
      }
      ids.set(row, place.offset + b * place.seqLen);
      mask.set(attentionMask[b], place.offset + b * place.seqLen);
    });
    const t = scoredTargets(inputIds, attentionMask, place.seqLen);
    target.set(t, place.offset);
    place.scored = t.reduce((n, v) => n + (v === NO_TARGET ? 0 : 1), 0);
  });
  return { ids, mask, target, layout };
}
