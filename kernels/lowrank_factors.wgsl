// lowrank_factors: the factors of EGGROLL's low-rank perturbation (Sarkar et al. 2025), written
// from the counter-based noise. A member's perturbation of a matrix W (O, I) is
// σ·A·Bᵀ/√r with A (O, r) and B (I, r) standard normal: element (o, k) of A is noise element
// o·r + k of the counter word `tensor` (kernels/lowrank.ts lowRankCounterIds), B likewise.
//
// Shapes. One dispatch writes rows [row0, row0 + rows) of one factor (A or B) for the noises
// noise0 .. noise0 + span − 1 (a group of the update's noises, zeros past the last one; a
// member's one noise):
// element (row, k) of noise noise0 + i goes to
// out[(row − row0)·row_stride + i·noise_stride + k·k_stride], times multiplier, and times the
// noise's scale when `scaled`. The strides give the layouts the
// engine wants: a member's A as (O, r4) (row_stride r4), its Bᵀ as (r4, I) (k_stride I), and the
// update's Ã (rows, n·r4) and B̃ (I, n·r4) (noise_stride r4). r4 = r rounded up to 4; the pad
// columns are never written and stay zero. One invocation owns one aligned block of four counter
// elements of one noise, so each Philox call yields all four normals it makes.
//
// The params record (which noises, their scales) is prepended by the wrapper: a member's
// perturb record (one noise, scale ±σ_t) or the update's header and coefficients d_i (n noises).

// struct Factor (the record of one dispatch) comes from kernels/records.ts, prepended by the
// wrapper with the params and their accessors.

@group(0) @binding(0) var<storage, read> factor: Factor;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) groups: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let idx = (wid.y * groups.x + wid.x) * WG + lid;
  let start = factor.row0 * factor.rank;
  let end = (factor.row0 + factor.rows) * factor.rank;
  let first = start >> 2u;
  let blocks = ((end + 3u) >> 2u) - first;
  let i = idx / blocks;
  // span 0: the noises there are (a member's one; all of the update's).
  let span = select(factor.span, noise_count() - min(factor.noise0, noise_count()), factor.span == 0u);
  if (i >= span) {
    return;
  }
  // Past the last noise (a last, partial group) the columns are written as zeros, so the
  // group's matmul adds nothing for them.
  let g = factor.noise0 + i;
  let live = g < noise_count();
  let block = first + idx % blocks;
  var v = vec4f(0.0);
  if (live) {
    var s = factor.multiplier;
    if (factor.scaled != 0u) {
      s *= noise_scale(g);
    }
    v = noise4(noise_key(), params.iteration, noise_index(g), factor.tensor, block) * s;
  }
  for (var k4 = 0u; k4 < 4u; k4++) {
    let e = block * 4u + k4;
    if (e >= start && e < end) {
      let row = e / factor.rank;
      let k = e % factor.rank;
      out[(row - factor.row0) * factor.row_stride + i * factor.noise_stride + k * factor.k_stride] =
        v[k4];
    }
  }
}
