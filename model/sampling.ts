/**
 * Choosing the next token from a row of logits, on the host: greedy (argmax), or seeded sampling
 * with temperature, top-k and top-p (nucleus), applied in HF transformers' order (temperature,
 * then top-k, then top-p). Pure functions of the logits and one uniform number, so a generation
 * is reproducible from its seed alone.
 *
 * The uniform numbers come from Philox4x32-10 (kernels/philox.ts) keyed by the seed, with the
 * counter (step, sequence, {@link SAMPLING_STREAM}, round): the draw for sequence i at step k
 * does not depend on what the other sequences drew or on how many there are, and a run's
 * iterations draw apart by their round (pipeline/reward_run.ts).
 *
 * Tests: tests/sampling_test.ts.
 *
 * @module
 */
import { philox4x32_10, type Seed, seedKey } from "../kernels/philox.ts";

/** How the next token is chosen. Absent fields: greedy. */
export interface SamplingOptions {
  /** Softmax temperature; 0 (the default) is greedy decoding. */
  temperature?: number;
  /** Keep the k most likely tokens; 0 (the default) keeps all. */
  topK?: number;
  /** Keep the smallest set of most likely tokens whose probability reaches p; 1 (the default) keeps all. */
  topP?: number;
  /** Seed of the uniform draws. Default 0. */
  seed?: Seed;
}

/** Philox stream tag (counter word 2) of the sampling draws: apart from noise and data draws. */
export const SAMPLING_STREAM = 0x5A3B1E00;

/** Whether `o` samples (temperature > 0) rather than decoding greedily. */
export function isSampling(o: SamplingOptions | undefined): boolean {
  return (o?.temperature ?? 0) > 0;
}

/** Throws a RangeError naming the field unless `o` is a valid set of sampling options. */
export function checkSampling(o: SamplingOptions): void {
  const t = o.temperature ?? 0, k = o.topK ?? 0, p = o.topP ?? 1;
  if (!(t >= 0) || !Number.isFinite(t)) throw new RangeError(`temperature ${t} must be ≥ 0`);
  if (!Number.isInteger(k) || k < 0) throw new RangeError(`top-k ${k} must be an integer ≥ 0`);
  if (!(p > 0 && p <= 1)) throw new RangeError(`top-p ${p} must be in (0, 1]`);
}

/** The index of the largest of `n` logits from `offset` (the lowest index on ties). */
export function argmax(logits: ArrayLike<number>, offset = 0, n = logits.length - offset): number {
  let best = 0, top = -Infinity;
  for (let i = 0; i < n; i++) {
    const z = logits[offset + i];
    if (z > top) {
      top = z;
      best = i;
    }
  }
  return best;
}

/**
 * The token sampled from `n` logits at `offset` with uniform `u` ∈ [0, 1): softmax(z / T) over
 * the tokens top-k and top-p keep, inverted at u over the kept tokens in descending order of
 * probability (ties: lower id first). Greedy when the temperature is 0.
 */
export function sampleToken(
  logits: ArrayLike<number>,
  o: SamplingOptions & { u: number; offset?: number; n?: number },
): number {
  const offset = o.offset ?? 0, n = o.n ?? logits.length - offset;
  const t = o.temperature ?? 0;
  if (!(t > 0)) return argmax(logits, offset, n);
  const order = Array.from({ length: n }, (_, i) => i);
  order.sort((a, b) => logits[offset + b] - logits[offset + a] || a - b);
  const k = o.topK && o.topK > 0 ? Math.min(o.topK, n) : n;
  const top = logits[offset + order[0]] / t;
  const p = new Float64Array(k);
  let z = 0;
  for (let i = 0; i < k; i++) {
    p[i] = Math.exp(logits[offset + order[i]] / t - top);
    z += p[i];
  }
  // top-p: the smallest prefix whose mass reaches p (at least one token).
  let keep = k, mass = 0;
  const topP = o.topP ?? 1;
  if (topP < 1) {
    for (let i = 0; i < k; i++) {
      mass += p[i] / z;
      if (mass >= topP) {
        keep = i + 1;
        break;
      }
    }
  }
  let kept = 0;
  for (let i = 0; i < keep; i++) kept += p[i];
  let acc = 0;
  const target = o.u * kept;
  for (let i = 0; i < keep; i++) {
    acc += p[i];
    if (target < acc) return order[i];
  }
  return order[keep - 1];
}

/**
 * The uniform draws of a seed: `draw(step, sequence, round = 0)` ∈ [0, 1), 53 random bits from
 * one Philox4x32-10 block.
 */
export function samplingDraws(
  seed: Seed,
): (step: number, sequence: number, round?: number) => number {
  const key = seedKey(seed);
  const words = new Uint32Array(4);
  return (step, sequence, round = 0) => {
    philox4x32_10([step, sequence, SAMPLING_STREAM, round], key, words);
    return ((words[0] >>> 5) * 67108864 + (words[1] >>> 6)) / 9007199254740992;
  };
}
