// lowrank_embed: the embedding gather's low-rank correction, x[r] += a[ids[r]]·Bᵀ, so that x is
// the gather from the perturbed table E + σ·A·Bᵀ/√r (the scale is folded into a).
// Legend: R = token rows (B·T), H = hidden, R4 = rank rounded up to 4.
// ids is (R) u32, a is (V, R4) (σ_t·m/√r·A, pad columns zero), bt is (R4, H) (Bᵀ, pad rows zero),
// x is (R, H). One invocation adds one vec4 of one row.
// Population batching: token rows come in blocks of RM per member; member m's a starts A_MS
// elements and its bt B_MS4 vec4s further on.
// Constants: R, H (multiple of 4), R4, RM, A_MS, B_MS4, WG, GRID_X.
@group(0) @binding(0) var<storage, read> ids: array<u32>;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> bt: array<vec4f>;
@group(0) @binding(3) var<storage, read_write> x: array<vec4f>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = (wid.y * GRID_X + wid.x) * WG + lid.x;
  if (i >= R * (H / 4u)) { return; }
  let row = i / (H / 4u);
  let c = i % (H / 4u);
  let id = ids[row];
  let m = row / RM;
  var acc = vec4f(0.0);
  for (var k = 0u; k < R4; k++) {
    acc += a[m * A_MS + id * R4 + k] * bt[m * B_MS4 + k * (H / 4u) + c];
  }
  x[i] += acc;
}
