// Σ x² of one tensor shard, one partial sum per workgroup, so a run knows ‖θ‖ without reading θ
// back (kernels/sum_squares.ts adds the partials in float64).
// Legend: N = elements in the shard, E = PER·WG elements per workgroup.
// x is (N) f32 read as u32 bits, or (N/2) u32 words of bf16 pairs, element 2k in the low half of
// word k (BF16); partials is (workgroups) f32: partials[g] = Σ x[i]² over i in [g·E, (g+1)·E).
// Constants: N, PER (elements per invocation), BF16, WG (a power of two), GRID_X.
@group(0) @binding(0) var<storage, read> x: array<u32>;
@group(0) @binding(1) var<storage, read_write> partials: array<f32>;

var<workgroup> acc: array<f32, WG>;

fn element(i: u32) -> f32 {
  if (BF16) {
    let w = x[i >> 1u];
    return bitcast<f32>(select(w << 16u, w & 0xFFFF0000u, (i & 1u) == 1u));
  }
  return bitcast<f32>(x[i]);
}

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(local_invocation_index) li: u32,
) {
  let group = wid.y * GRID_X + wid.x;
  // Contiguous runs per invocation keep the loads of a workgroup close together.
  let first = (group * WG + li) * PER;
  var s = 0.0;
  for (var k = 0u; k < PER; k++) {
    let i = first + k;
    if (i >= N) { break; }
    let v = element(i);
    s += v * v;
  }
  acc[li] = s;
  workgroupBarrier();
  // A fixed tree over the workgroup: the same θ gives the same partials on one adapter.
  for (var h = WG / 2u; h > 0u; h >>= 1u) {
    if (li < h) { acc[li] += acc[li + h]; }
    workgroupBarrier();
  }
  if (li == 0u) { partials[group] = acc[0]; }
}
