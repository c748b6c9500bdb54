/**
 * The paper's log-likelihood fitness, streamed over vocabulary chunks:
 * R(x;θ) = Σ_t m_{t+1} log softmax(z_t)[x_{t+1}] / Σ_t m_{t+1}  (EA4LLM §3, eq. for R),
 * computed with an online log-sum-exp so a (B, T, V) logits buffer never exists.
 *
 * Tests: tests/kernels_test.ts (streamed against the full log-softmax), tests/native_test.ts (CPU).
 *
 * @module
 */
import type { Device, DeviceBuffer } from "./device.ts";
import { launch, type Step } from "./program.ts";

/** Marks a position with no scored next token. */
export const NO_TARGET = 0xffffffff;

/** Folds one (rows, width) chunk of logits, covering vocab ids [start, start+width), into state. */
export function logsumexpChunkStep(
  device: Device,
  o: {
    label: string;
    logits: DeviceBuffer;
    target: DeviceBuffer;
    state: DeviceBuffer;
    rows: number;
    width: number;
    start: number;
    first: boolean;
  },
): Step {
  return launch(device, {
    label: o.label,
    kernel: "logsumexp_chunk",
    consts: { R: o.rows, C: o.width, C0: o.start, FIRST: o.first },
    buffers: [o.logits, o.target, o.state],
    invocations: o.rows,
  });
}

/**
 * Per-sample R from the final state: r (batch) f32. `compact`: the state holds the scored rows
 * alone, in row order ({@link compactTargets}), where it otherwise holds every row of the batch.
 */
export function logLikelihoodStep(
  device: Device,
  o: {
    label: string;
    target: DeviceBuffer;
    state: DeviceBuffer;
    r: DeviceBuffer;
    batch: number;
    seqLen: number;
    compact?: boolean;
  },
): Step {
  return launch(device, {
    label: o.label,
    kernel: "log_likelihood",
    consts: { B: o.batch, T: o.seqLen, COMPACT: o.compact ?? false },
    buffers: [o.target, o.state, o.r],
    invocations: o.batch,
  });
}

/**
 * Targets of a right- or otherwise-padded batch: target[b·T+t] = ids[b][t+1] when
 * mask[b][t+1] = 1, else {@link NO_TARGET}. The mask of the *target* position decides.
 */
export function scoredTargets(
  ids: readonly (readonly number[])[],
  mask: readonly (readonly number[])[],
  seqLen: number,
): Uint32Array {
  const out = new Uint32Array(ids.length * seqLen).fill(NO_TARGET);
  ids.forEach((row, b) => {
    for (let t = 0; t + 1 < Math.min(row.length, seqLen); t++) {
      if (mask[b][t + 1]) out[b * seqLen + t] = row[t + 1];
    }
  });
  return out;
}

/** Float64 reference: per-sample R from full logits (B, T, V). */
export function logLikelihoodReference(
  logits: ArrayLike<number>,
  target: Uint32Array,
  o: { batch: number; seqLen: number; vocab: number },
): Float64Array {
  const r = new Float64Array(o.batch);
  for (let b = 0; b < o.batch; b++) {
    let sum = 0, n = 0;
    for (let t = 0; t < o.seqLen; t++) {
      const row = b * o.seqLen + t;
      if (target[row] === NO_TARGET) continue;
      let mx = -Infinity;
      for (let v = 0; v < o.vocab; v++) mx = Math.max(mx, logits[row * o.vocab + v]);
      let z = 0;
      for (let v = 0; v < o.vocab; v++) z += Math.exp(logits[row * o.vocab + v] - mx);
      sum += logits[row * o.vocab + target[row]] - mx - Math.log(z);
      n++;
    }
    r[b] = n > 0 ? sum / n : 0;
  }
  return r;
}

/**
 * The scored rows of a batch's targets, for an LM head that reads those alone: `rows[i]` is the
 * i-th row with a target (in row order) and `targets[i]` its target, both `size` long; the rows
 * past the last scored one repeat row 0 with {@link NO_TARGET}, so the head computes them from
 * real data and the log-softmax skips them. Throws when more than `size` rows are scored.
 */
export function compactTargets(
  target: Uint32Array,
  size: number,
): { rows: Uint32Array; targets: Uint32Array; scored: number } {
  const rows = new Uint32Array(size), targets = new Uint32Array(size).fill(NO_TARGET);
  let scored = 0;
  target.forEach((t, row) => {
    if (t === NO_TARGET) return;
    if (scored === size) {
      throw new Error(`compactTargets: more than ${size} scored rows in the batch`);
    }
    rows[scored] = row;
    targets[scored++] = t;
  });
  return { rows, targets, scored };
}
