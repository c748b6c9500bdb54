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

// Box–Muller: two u32 words → two independent N(0,1) samples (r·cos φ, r·sin φ).
// The radius word maps to u = (top24 + 1)·2^-24 ∈ (0, 1], never 0, so log(u) is finite and the
// largest |z| is sqrt(2·24·ln 2) ≈ 5.77 (tails beyond 5.77σ, probability 8e-9, are cut).
// The angle word maps to t = top24·2^-23 − 1 ∈ [−1, 1) exactly, then φ = π·t ∈ [−π, π): the
// argument range where WGSL's sin/cos are specified to be accurate.
fn noise_box_muller(a: u32, b: u32) -> vec2f {
  let u = f32((a >> 8u) + 1u) * NOISE_TWO_NEG_24;
  let radius = sqrt(-2.0 * log(u));
  let phi = NOISE_PI * (f32(b >> 8u) * NOISE_TWO_NEG_23 - 1.0);
  return vec2f(radius * cos(phi), radius * sin(phi));
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
