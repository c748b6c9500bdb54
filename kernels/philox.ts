/**
 * Counter-based Gaussian noise, the TypeScript twin of kernels/noise.wgsl.
 *
 * Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3",
 * SC 2011) turns a 128-bit counter and a 64-bit key into 128 random bits; Box–Muller turns each
 * pair of 32-bit words into two normals. EA4LLM's perturbations ε_j ~ N(0, I) (paper §3, "ES
 * estimator") are regenerated from integers wherever they are needed and never stored.
 *
 * Counter layout. Element e of tensor `tensor` for population member `member` at `iteration`
 * under run seed `seed`:
 *   key     = (seed lo32, seed hi32)
 *   counter = (floor(e/4), tensor, member, iteration)
 *   words   = Philox4x32-10(counter, key) = (w0, w1, w2, w3)
 *   ε[4b..4b+3] = (r·cos πt, r·sin πt) of (w0, w1), then of (w2, w3)
 * so ε is a pure function of (seed, iteration, member, tensor, element). Tensor ids, member
 * (noise) indices and iterations are u32; the GPU kernels index elements as u32, so a tensor
 * has fewer than 2^32 elements (the counter itself would allow 2^34).
 *
 * Box–Muller maps (see {@link boxMuller}): u = (w≫8 + 1)·2^-24 ∈ (0, 1] for the radius, never 0
 * so log u is finite (|ε| ≤ 5.77); t = (w≫8)·2^-23 − 1 ∈ [−1, 1) for the angle πt.
 *
 * Twin tolerance. The u32 words are identical bit for bit between this file and the WGSL. So
 * are u and the reduced angle (every step is exact or one correctly rounded f32 multiply,
 * mirrored here with Math.fround). Only ln, sqrt, sin and cos differ: TypeScript evaluates them
 * in f64 and rounds to f32; the GPU uses its own sqrt, its log below 0.75 and short series for
 * ln near 1 and for sin/cos (noise_log_unit, noise_sincospi in the WGSL).
 * Measured on lavapipe over 2^20 normals: at most 4 ulp apart, |Δε| ≤ 7.2e-7, and
 * |Δε|/max(1, |ε|) ≤ 3.3e-7; tests/philox_test.ts holds it to 1e-6. WGSL only promises sin/cos to
 * 2^-11 absolute, so a GPU with coarse trig may differ more in the normals, never in the words.
 *
 * Tests: tests/philox_test.ts (known answers, WGSL words and normals), tests/native_test.ts (CPU words and normals).
 *
 * @module
 */

/** Philox4x32 round multipliers and Weyl key increments (Random123 philox.h). */
const M0 = 0xD2511F53;
const M1 = 0xCD9E8D57;
const W0 = 0x9E3779B9;
const W1 = 0xBB67AE85;

const TWO_NEG_24 = 2 ** -24;
const TWO_NEG_23 = 2 ** -23;
const PI_F32 = Math.fround(Math.PI);

/** A run seed: a non-negative integer below 2^64 (a number must be a safe integer). */
export type Seed = number | bigint;

/** The Philox key of a run seed: (seed lo32, seed hi32). */
export function seedKey(seed: Seed): [number, number] {
  if (typeof seed === "bigint") {
    if (seed < 0n || seed >= 1n << 64n) throw new RangeError(`seed ${seed} is not a u64`);
    return [Number(seed & 0xFFFFFFFFn), Number(seed >> 32n)];
  }
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new RangeError(`seed ${seed} must be a non-negative safe integer (or a bigint)`);
  }
  return [seed % 2 ** 32, Math.floor(seed / 2 ** 32)];
}

/**
 * High 32 bits of the 64-bit product a·b, from 16-bit halves exactly as the WGSL does it
 * (every partial product is below 2^32, so f64 holds it exactly; the sum cannot overflow).
 */
export function mulhi32(a: number, b: number): number {
  const al = a & 0xFFFF, ah = a >>> 16, bl = b & 0xFFFF, bh = b >>> 16;
  const ll = al * bl, lh = al * bh, hl = ah * bl;
  const mid = (ll >>> 16) + (lh & 0xFFFF) + (hl & 0xFFFF);
  return (ah * bh + (lh >>> 16) + (hl >>> 16) + (mid >>> 16)) >>> 0;
}

/**
 * Philox4x32-10 (Salmon et al. 2011): ten rounds of
 * (c0,c1,c2,c3) ← (hi(M1·c2) ⊕ c1 ⊕ k0, lo(M1·c2), hi(M0·c0) ⊕ c3 ⊕ k1, lo(M0·c0)),
 * with the key bumped by (W0, W1) between rounds. Writes the four output words into `out`.
 */
export function philox4x32_10(
  counter: ArrayLike<number>,
  key: ArrayLike<number>,
  out: Uint32Array = new Uint32Array(4),
): Uint32Array {
  let c0 = counter[0] >>> 0, c1 = counter[1] >>> 0, c2 = counter[2] >>> 0, c3 = counter[3] >>> 0;
  let k0 = key[0] >>> 0, k1 = key[1] >>> 0;
  for (let round = 0; round < 10; round++) {
    const hi0 = mulhi32(M0, c0), lo0 = Math.imul(M0, c0) >>> 0;
    const hi1 = mulhi32(M1, c2), lo1 = Math.imul(M1, c2) >>> 0;
    c0 = (hi1 ^ c1 ^ k0) >>> 0;
    c1 = lo1;
    c2 = (hi0 ^ c3 ^ k1) >>> 0;
    c3 = lo0;
    k0 = (k0 + W0) >>> 0;
    k1 = (k1 + W1) >>> 0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
  return out;
}

/**
 * Box–Muller (Box & Muller 1958): two u32 words → two N(0,1) samples (r·cos πt, r·sin πt) with
 * r = sqrt(−2 ln u), u = (a≫8 + 1)·2^-24 ∈ (0, 1] and t = (b≫8)·2^-23 − 1 ∈ [−1, 1).
 * The angle is taken exactly as the WGSL takes it: q = round-half-even(2t) quarter turns plus
 * x = f32(π_f32·(t − q/2)), |x| ≤ π/4 (t − q/2 is exact). Every rounding the WGSL makes outside
 * ln, sqrt, sin and cos is mirrored with Math.fround, so only those four differ.
 */
export function boxMuller(a: number, b: number): [number, number] {
  const u = ((a >>> 8) + 1) * TWO_NEG_24; // exact in f32: an integer ≤ 2^24 times a power of 2
  const radius = Math.fround(Math.sqrt(Math.fround(-2 * Math.fround(Math.log(u)))));
  const [sin, cos] = sinCosPi((b >>> 8) * TWO_NEG_23 - 1);
  return [Math.fround(radius * cos), Math.fround(radius * sin)];
}

/** (sin πt, cos πt) rounded to f32, reduced to quarter turns as noise_sincospi in the WGSL. */
function sinCosPi(t: number): [number, number] {
  const q = roundHalfEven(2 * t);
  const x = Math.fround(PI_F32 * (t - q / 2)); // one correctly rounded f32 multiply, as on GPU
  const s = Math.fround(Math.sin(x)), c = Math.fround(Math.cos(x));
  switch ((q + 4) & 3) {
    case 1:
      return [c, -s];
    case 2:
      return [-s, -c];
    case 3:
      return [-c, s];
    default:
      return [s, c];
  }
}

/** WGSL round(): to the nearest integer, ties to even. */
function roundHalfEven(v: number): number {
  const f = Math.floor(v), d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** Which noise stream: (seed, iteration, member, tensor) of the module doc's counter layout. */
function streamCheck(iteration: number, member: number, tensor: number, count: number): void {
  for (const [name, v] of [["iteration", iteration], ["member", member], ["tensor", tensor]]) {
    if (!Number.isInteger(v) || (v as number) < 0 || (v as number) > 0xFFFFFFFF) {
      throw new RangeError(`${name} ${v} must be a u32`);
    }
  }
  if (!Number.isInteger(count) || count < 0 || count > 2 ** 34) {
    throw new RangeError(`count ${count} must be an integer in [0, 2^34]`);
  }
}

/**
 * The raw Philox words behind elements 0..count−1 of one noise stream: word i of the result is
 * word i%4 of Philox4x32-10((floor(i/4), tensor, member, iteration), seedKey(seed)). Elements
 * 2k and 2k+1 are the Box–Muller pair of words 2k and 2k+1.
 */
export function noiseWords(
  seed: Seed,
  iteration: number,
  member: number,
  tensor: number,
  count: number,
): Uint32Array {
  streamCheck(iteration, member, tensor, count);
  const key = seedKey(seed);
  const out = new Uint32Array(count);
  const counter = [0, tensor, member, iteration];
  const words = new Uint32Array(4);
  for (let block = 0; block * 4 < count; block++) {
    counter[0] = block;
    philox4x32_10(counter, key, words);
    for (let k = 0; k < 4 && block * 4 + k < count; k++) out[block * 4 + k] = words[k];
  }
  return out;
}

/**
 * ε for elements 0..count−1 of `tensor`, for `member` at `iteration` under `seed`: the same
 * stream the WGSL `noise4`/`noise` functions produce (words bit-identical, normals within the
 * tolerance in the module doc).
 */
export function gaussianNoise(
  seed: Seed,
  iteration: number,
  member: number,
  tensor: number,
  count: number,
): Float32Array {
  const words = noiseWords(seed, iteration, member, tensor, alignUp2(count));
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 2) {
    const [z0, z1] = boxMuller(words[i], words[i + 1]);
    out[i] = z0;
    if (i + 1 < count) out[i + 1] = z1;
  }
  return out;
}

function alignUp2(n: number): number {
  return n + (n & 1);
}

/** WGSL source of the noise library (philox4x32_10, noise_box_muller, noise4, noise). */
export const noiseWgsl: string = Deno.readTextFileSync(new URL("./noise.wgsl", import.meta.url));
