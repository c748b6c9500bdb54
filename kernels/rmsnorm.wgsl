// RMSNorm over the last dimension, as HF Qwen3RMSNorm: y = w · x · rsqrt(mean(x²) + eps), in f32.
// Legend: R = rows (tokens or token·heads), D = normalised width.
// x is (R, D), w is (D), y is (R, D). One invocation per row: rows are independent and the
// per-lane row walk avoids barriers, which lavapipe runs slowly.
// Population batching: rows come in blocks of RM per member, and member m's w starts W_MS4 vec4s
// further on (0: shared).
// Constants: R, D (multiple of 4), EPS, RM, W_MS4, WG, GRID_X.
@group(0) @binding(0) var<storage, read> x: array<vec4f>;
@group(0) @binding(1) var<storage, read> w: array<vec4f>;
@group(0) @binding(2) var<storage, read_write> y: array<vec4f>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let row = (wid.y * GRID_X + wid.x) * WG + lid.x;
  if (row >= R) { return; }
  let base = row * (D / 4u);
  // The loop bounds are opaque to the compiler (wid.z is 0 in this 1-D launch): kernels/program.ts
  // launch says why.
  let d4 = max(D / 4u, wid.z);
  var ss = vec4f(0.0);
  for (var i = 0u; i < d4; i++) {
    let v = x[base + i];
    ss += v * v;
  }
  let inv = inverseSqrt((ss.x + ss.y + ss.z + ss.w) / f32(D) + EPS);
  let wbase = (row / RM) * W_MS4;
  for (var i = 0u; i < d4; i++) {
    y[base + i] = w[wbase + i] * (x[base + i] * inv);
  }
}
