/**
 * Token batches: truncation to a maximum length, right padding, and micro-batching.
 * Pure functions of their inputs, shared by `deno task eval` and the dataset stage.
 *
 * @module
 */
import type { TokenBatch } from "../model/forward.ts";

/** Right-pads sequences (each already ≤ the length wanted) into one batch with its mask. */
export function padBatch(
  seqs: readonly (readonly number[])[],
  options: { padId: number },
): TokenBatch {
  const len = Math.max(0, ...seqs.map((s) => s.length));
  return {
    inputIds: seqs.map((s) => [...s, ...new Array(len - s.length).fill(options.padId)]),
    attentionMask: seqs.map((
      s,
    ) => [...new Array(s.length).fill(1), ...new Array(len - s.length).fill(0)]),
  };
}

/** Splits `items` into consecutive groups of at most `size`. */
export function microBatches<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/** Splits an already padded batch into micro-batches of at most `size` rows, trimming each to its longest row. */
export function splitBatch(batch: TokenBatch, size: number): TokenBatch[] {
  const out: TokenBatch[] = [];
  for (let i = 0; i < batch.inputIds.length; i += size) {
    const ids = batch.inputIds.slice(i, i + size), mask = batch.attentionMask.slice(i, i + size);
    // Columns where every row is padding cost compute and change nothing: trim them.
    let len = 0;
    mask.forEach((m) => m.forEach((v, t) => v && (len = Math.max(len, t + 1))));
    len = Math.max(len, 1);
    out.push({
      inputIds: ids.map((r) => r.slice(0, len)),
      attentionMask: mask.map((r) => r.slice(0, len)),
    });
  }
  return out;
}
