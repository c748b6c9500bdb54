// Counter-based Gaussian noise: Philox4x32-10 + Box–Muller. A library, no entry point: kernels
// prepend it (philox.ts exports it as `noiseWgsl`). kernels/philox.ts is the bit-exact
// TypeScript twin; see its module doc for the counter layout and the tolerance on the normals.
//
// Shapes: none. Every function is a pure function of its integer arguments, so noise is never
// stored: a kernel that needs ε[e] of (seed, iteration, member, tensor) regenerates it.

// Philox4x32 constants (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as
// 1, 2, 3", SC 2011; Random123 philox.h): round multipliers and Weyl key increments.
const PHILOX_M0: u32 = 0xD2511F53u;
const PHILOX_M1: u32 = 0xCD9E8D57u;
const PHILOX_W0: u32 = 0x9E3779B9u;
const PHILOX_W1: u32 = 0xBB67AE85u;

// 2^-24 and 2^-23: the u32 → float maps keep the top 24 bits, which f32 holds exactly.
const NOISE_TWO_NEG_24: f32 = 5.9604644775390625e-8;
const NOISE_TWO_NEG_23: f32 = 1.1920928955078125e-7;
// π rounded to f32; the TypeScript twin uses Math.fround(Math.PI), the same bits.
const NOISE_PI: f32 = 3.14159265358979323846;

// High 32 bits of the 64-bit product a·b. WGSL has no 64-bit integers, so the product is built
// from 16-bit halves: each partial product is < 2^32 and the middle sum < 3·2^16, so nothing
// overflows and the result is exact.
fn philox_mulhi(a: u32, b: u32) -> u32 {
  let al = a & 0xFFFFu;
  let ah = a >> 16u;
  let bl = b & 0xFFFFu;
  let bh = b >> 16u;
  let ll = al * bl;
  let lh = al * bh;
  let hl = ah * bl;
  let mid = (ll >> 16u) + (lh & 0xFFFFu) + (hl & 0xFFFFu);
  return ah * bh + (lh >> 16u) + (hl >> 16u) + (mid >> 16u);
}

// Philox4x32-10: ten rounds of the Random123 round function, key bumped by the Weyl constants
// between rounds. u32 arithmetic wraps in WGSL, which is the mod-2^32 arithmetic Philox wants.
fn philox4x32_10(counter: vec4u, key: vec2u) -> vec4u {
  var c = counter;
  var k = key;
  for (var round = 0u; round < 10u; round++) {
    let hi0 = philox_mulhi(PHILOX_M0, c.x);
    let lo0 = PHILOX_M0 * c.x;
    let hi1 = philox_mulhi(PHILOX_M1, c.z);
    let lo1 = PHILOX_M1 * c.z;
    c = vec4u(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    // The bump after the tenth round is never used; keeping the loop uniform is simpler.
    k = k + vec2u(PHILOX_W0, PHILOX_W1);
  }
  return c;
}

// ln u for u ∈ (0, 1] with a small relative error everywhere. Near 1, log(u) loses relative
// accuracy on common implementations (lavapipe computes log2 of the mantissa, ≈ 2 for u just
// below 1, minus 1: an absolute error near 2^-24 against a result of ~1e-7), which made the
// Box–Muller radius of a quarter of the normals drift from the TypeScript twin by up to 2e-5.
// Above 0.75 use ln u = 2·atanh(s), s = (u − 1)/(u + 1), |s| < 1/7: the series to s^7 leaves a
// relative error below s^8/9 < 1e-8, and u − 1 is exact.
fn noise_log_unit(u: f32) -> f32 {
  if (u <= 0.75) {
    return log(u);
  }
  let s = (u - 1.0) / (u + 1.0);
  let s2 = s * s;
  return 2.0 * s * (1.0 + s2 * (1.0 / 3.0 + s2 * (0.2 + s2 * (1.0 / 7.0))));
}

// Box–Muller: two u32 words → two independent N(0,1) samples (r·cos πt, r·sin πt).
// The radius word maps to u = (top24 + 1)·2^-24 ∈ (0, 1], never 0, so log(u) is finite and the
// largest |z| is sqrt(2·24·ln 2) ≈ 5.77 (tails beyond 5.77σ, probability 8e-9, are cut).
// The angle word maps to t = top24·2^-23 − 1 ∈ [−1, 1) exactly; the angle is πt.
fn noise_box_muller(a: u32, b: u32) -> vec2f {
  let u = f32((a >> 8u) + 1u) * NOISE_TWO_NEG_24;
  let radius = sqrt(-2.0 * noise_log_unit(u));
  let t = f32(b >> 8u) * NOISE_TWO_NEG_23 - 1.0;
  let sc = noise_sincospi(t);
  return vec2f(radius * sc.y, radius * sc.x);
}

// (sin πt, cos πt) for t ∈ [−1, 1). Our own polynomial instead of WGSL sin/cos, because those
// are only specified to 2^-11 absolute and, on lavapipe, cost more than the Philox rounds.
// Reduce exactly: q = round(2t), r = t − q/2 ∈ [−1/4, 1/4] (both exact in f32), x = π·r; then
// Taylor series on |x| ≤ π/4 (truncation below 3e-8 absolute) and a quarter-turn rotation by q.
fn noise_sincospi(t: f32) -> vec2f {
  let q = round(2.0 * t);
  let x = NOISE_PI * (t - 0.5 * q);
  let x2 = x * x;
  let s = x * (1.0 + x2 * (-1.0 / 6.0 + x2 * (1.0 / 120.0 + x2 * (-1.0 / 5040.0 + x2 * (1.0 / 362880.0)))));
  let c = 1.0 + x2 * (-0.5 + x2 * (1.0 / 24.0 + x2 * (-1.0 / 720.0 + x2 * (1.0 / 40320.0))));
  // q ∈ {−2, −1, 0, 1, 2}; quarter turns mod 4: 0 → (s, c), 1 → (c, −s), 2 → (−s, −c), 3 → (−c, s).
  let turn = u32(i32(q) + 4) & 3u;
  var sc = vec2f(s, c);
  if (turn == 1u) {
    sc = vec2f(c, -s);
  } else if (turn == 2u) {
    sc = vec2f(-s, -c);
  } else if (turn == 3u) {
    sc = vec2f(-c, s);
  }
  return sc;
}

// The four normals of elements 4·block .. 4·block+3 of one tensor's noise, for one member of
// one iteration. key = (seed lo32, seed hi32); counter = (block, tensor, member, iteration).
fn noise4(key: vec2u, iteration: u32, member: u32, tensor: u32, block: u32) -> vec4f {
  let w = philox4x32_10(vec4u(block, tensor, member, iteration), key);
  return vec4f(noise_box_muller(w.x, w.y), noise_box_muller(w.z, w.w));
}

// One normal, element e. Four times the work of noise4 per element: kernels that touch
// consecutive elements should call noise4 once per block of four.
fn noise(key: vec2u, iteration: u32, member: u32, tensor: u32, e: u32) -> f32 {
  return noise4(key, iteration, member, tensor, e >> 2u)[e & 3u];
}
