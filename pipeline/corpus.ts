/**
 * A text corpus as an ES run consumes it: tokenized once, a held-out split fixed by the seed,
 * and for each iteration t the subset of M samples every member is scored on, packed in
 * micro-batches for one upload (pipeline/data.ts has the pure pieces). Every process that builds
 * a corpus from the same texts, tokenizer and seed gets the same bytes for every iteration.
 *
 * @module
 */
import type { TokenBatch } from "../model/forward.ts";
import type { Tokenizer } from "../tokenizers/mod.ts";
import type { Seed } from "../kernels/philox.ts";
import {
  heldOutBatches,
  iterationBatches,
  packBatches,
  type PackedBatches,
  splitHoldout,
  subsetSamples,
  tokenizeSamples,
} from "./data.ts";
import { UserError } from "../errors.ts";

/** Options of {@link textCorpus}. */
export interface CorpusOptions {
  /** Turns each text into token ids. */
  tokenizer: Tokenizer;
  /** The run seed: the held-out split and every iteration's subset derive from it. */
  seed: Seed;
  /** Samples set aside for the held-out loss. */
  holdout: number;
  /** Tokens per sample at most (longer texts are cut). */
  maxLen: number;
  /** Samples per forward pass. */
  microBatch: number;
}

/** What {@link textCorpus} gives: the split, each iteration's batch, and the held-out set. */
export interface TextCorpus {
  /** Every kept sample's tokens (texts of fewer than two tokens are dropped). */
  readonly tokens: readonly number[][];
  /** Indices into `tokens` of the training and the held-out samples. */
  readonly split: { train: readonly number[]; holdout: readonly number[] };
  /** The held-out samples in micro-batches, packed once for the whole run. */
  readonly heldOut: PackedBatches;
  /** Scored tokens of each held-out sample, in the order of `heldOut`. */
  readonly heldOutTokens: readonly number[];
  /** Iteration t's M samples (indices into `tokens`) and their packed micro-batches. */
  batch(iteration: number, samples: number): { indices: number[]; packed: PackedBatches };
  /** Mean negative log-likelihood per scored token of the held-out R values, −Σ R_b·n_b / Σ n_b. */
  heldOutLoss(r: readonly number[]): number;
}

/**
 * Rounds a micro-batch's length up to a multiple of 16 (≤ maxLen), so few distinct shapes are
 * compiled or planned.
 */
export function bucketed(b: TokenBatch, o: { maxLen: number; padId: number }): TokenBatch {
  const T = b.inputIds[0]?.length ?? 0;
  const to = Math.min(o.maxLen, Math.ceil(T / 16) * 16);
  if (to === T) return b;
  const pad = (r: number[], v: number) => [...r, ...new Array(to - r.length).fill(v)];
  return {
    inputIds: b.inputIds.map((r) => pad(r, o.padId)),
    attentionMask: b.attentionMask.map((r) => pad(r, 0)),
  };
}

/** Held-out loss: mean negative log-likelihood per scored token, −Σ_b R_b·n_b / Σ_b n_b. */
export function heldOutLoss(r: readonly number[], tokens: readonly number[]): number {
  let s = 0, n = 0;
  r.forEach((rb, b) => {
    s += rb * tokens[b];
    n += tokens[b];
  });
  return -s / n;
}

/** Tokenizes `texts` and splits them; see {@link TextCorpus}. */
export function textCorpus(texts: readonly string[], o: CorpusOptions): TextCorpus {
  const { tokens } = tokenizeSamples(texts, o.tokenizer, { maxLen: o.maxLen });
  if (o.holdout >= tokens.length) {
    throw new UserError(
      `the corpus has ${tokens.length} samples of two or more tokens, not enough for a holdout of ` +
        `${o.holdout} and a training set; use a larger corpus or a smaller holdout`,
    );
  }
  const split = splitHoldout(tokens.length, { seed: o.seed, holdout: o.holdout });
  const shape = { microBatch: o.microBatch, padId: o.tokenizer.padId };
  const held = heldOutBatches(tokens, split.holdout, shape)
    .map((b) => bucketed(b, { maxLen: o.maxLen, padId: o.tokenizer.padId }));
  const heldOutTokens = held.flatMap((b) =>
    b.attentionMask.map((m) => m.slice(1).reduce((a, x) => a + x, 0))
  );
  return {
    tokens,
    split,
    heldOut: packBatches(held),
    heldOutTokens,
    batch(iteration, samples) {
      if (samples > split.train.length) {
        throw new UserError(
          `${samples} samples per iteration exceed the ${split.train.length} training samples ` +
            `left after the holdout`,
        );
      }
      const indices = subsetSamples(split.train, { seed: o.seed, iteration, size: samples });
      const batches = iterationBatches(tokens, indices, shape)
        .map((b) => bucketed(b, { maxLen: o.maxLen, padId: o.tokenizer.padId }));
      return { indices, packed: packBatches(batches) };
    },
    heldOutLoss: (r) => heldOutLoss(r, heldOutTokens),
  };
}
