// Qwen3's per-head RMSNorm (q_norm / k_norm) followed by half-split RoPE, in place.
// Legend: R = token rows, NH = heads in this tensor, D = head_dim.
// x is (R, NH, D), w is (D) shared by all heads, cos and sin are (positions, D/2): the angle of
// position p and frequency i, precomputed on the CPU exactly as HF rounds it.
// Where a row's position comes from, written in at //@position by kernels/qk_norm_rope.ts:
// - a forward over whole sequences (T tokens each): row r sits at r % T (right padding,
//   positions 0..T-1 like HF's default position_ids);
// - the KV-cache decode (kernels/kv_cache.ts), whose positions move every step and so are data:
//   row r is token r % TN of sequence r / TN, at pos[r / TN] + r % TN, with pos (sequences) u32
//   at binding 4 (//@pos-binding), clamped to the tables' last row P − 1 (a position past them is
//   a padding row that no query reads).
// RoPE: out[i] = a[i]·cos − a[i+D/2]·sin, out[i+D/2] = a[i+D/2]·cos + a[i]·sin (rotate_half).
// Population batching: token rows come in blocks of RM per member, and member m's w starts W_MS
// elements further on (0: shared).
// Constants: R, NH, D (even), EPS, RM, W_MS, WG, GRID_X; T, or TN and P.
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> cosT: array<f32>;
@group(0) @binding(3) var<storage, read> sinT: array<f32>;
//@pos-binding

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = (wid.y * GRID_X + wid.x) * WG + lid.x;
  if (i >= R * NH) { return; }
  let row = i / NH;
  let base = i * D;
  //@position
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
