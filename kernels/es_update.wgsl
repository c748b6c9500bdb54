// es_update: θ += m · Σ_i d_i · ε_i over one shard of a tensor, the noise regenerated here
// (EA4LLM §3: θ ← θ + α·(1/N)Σ_j w_j ε_j, or α/σ with NES; d_i folds the CPU's α_t·w_j/N).
//
// Shapes. n = distinct noises (N, or N/2 with antithetic pairs folded on the CPU). theta is one
// shard, `count` f32, holding elements [start, start + count) of a tensor of `numel`; coeffs
// are n f32. One invocation owns the aligned block of four elements 4·b..4·b+3 and walks all
// n noises for it, so θ is read and written once and each Philox call yields four normals.
//
// `eps4(i, block)` is the noise source, prepended by the wrapper at compile time: noise4 of
// (seed, iteration, i, tensor, block) in training, or ε read from a buffer in tests, so both
// run this same accumulation.

// struct Shard (one shard-table record) and struct Update (the iteration's seed and the noises'
// coefficients d_i) come from kernels/records.ts, prepended by the wrapper.

@group(0) @binding(0) var<storage, read> shard: Shard;
@group(0) @binding(1) var<storage, read> update: Update;
// Binding 2, θ, and `apply(block, acc)`, which adds acc to the block's elements inside the
// shard, come from the wrapper: f32 adds, or bf16 words rounded stochastically
// (kernels/es_update.ts APPLY_F32 / APPLY_BF16).

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) groups: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let block = (shard.start >> 2u) + (wid.y * groups.x + wid.x) * WG + lid;
  let end = shard.start + shard.count;
  if (block * 4u >= end) {
    return;
  }
  // The sum stays in f32 registers and touches θ once: adding each member's term to θ in turn
  // would round N times against θ's magnitude instead of once.
  var acc = vec4f(0.0);
  for (var i = 0u; i < update.count; i++) {
    acc += update.coeffs[i] * eps4(i, block);
  }
  apply(block, acc * shard.multiplier);
}
