// Qwen3's per-head RMSNorm (q_norm / k_norm) and half-split RoPE, in place, at positions held in
// a buffer: the KV-cache decode (kernels/kv_cache.ts), where each sequence's next position moves
// every step, so it is data written per step rather than a compile-time constant.
// Legend: S = sequences (members·B), TN = new tokens per sequence this step, R = S·TN rows,
// NH = heads in this tensor, D = head_dim, P = rows of the RoPE tables.
// x is (R, NH, D): row r is token r % TN of sequence r / TN. w is (D) shared by all heads.
// pos is (S) u32: the position of each sequence's first new token, so row r sits at
// pos[r / TN] + r % TN, clamped to P − 1 (a position past the tables is a padding row that no
// query ever reads). cos and sin are (P, D/2), as kernels/qk_norm_rope.ts ropeTables makes them.
// RoPE: out[i] = a[i]·cos − a[i+D/2]·sin, out[i+D/2] = a[i+D/2]·cos + a[i]·sin (rotate_half).
// Population batching: rows come in blocks of RM per member, and member m's w starts W_MS
// elements further on (0: shared).
// Constants: R, TN, NH, D (even), P, EPS, RM, W_MS, WG, GRID_X.
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> cosT: array<f32>;
@group(0) @binding(3) var<storage, read> sinT: array<f32>;
@group(0) @binding(4) var<storage, read> pos: array<u32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = (wid.y * GRID_X + wid.x) * WG + lid.x;
  if (i >= R * NH) { return; }
  let row = i / NH;
  let base = i * D;
  let p = min(pos[row / TN] + row % TN, P - 1u);
  // The loop bounds are opaque to the compiler (wid.z is 0 in this 1-D launch): kernels/program.ts
  // launch says why.
  let d = max(D, wid.z);
  var ss = 0.0;
  for (var j = 0u; j < d; j++) {
    let v = x[base + j];
    ss += v * v;
  }
  let inv = inverseSqrt(ss / f32(D) + EPS);
  let half = d / 2u;
  let wb = (row / RM) * W_MS;
  for (var j = 0u; j < half; j++) {
    let a = w[wb + j] * (x[base + j] * inv);
    let b = w[wb + j + half] * (x[base + j + half] * inv);
    let c = cosT[p * half + j];
    let s = sinT[p * half + j];
    x[base + j] = a * c - b * s;
    x[base + j + half] = b * c + a * s;
  }
}
