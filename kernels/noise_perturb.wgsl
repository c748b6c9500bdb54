// perturb: the perturbed copy of one shard of a tensor, θ' = θ + s·m·ε (EA4LLM §3: θ + σ·ε_j).
//
// Shapes. A tensor of `numel` f32 elements is stored as row shards; this dispatch covers
// elements [start, start + count) of the whole tensor: one shard, or a chunk of rows inside one.
// out is a buffer that holds them from index dst on (e at e − start + dst); theta is the θ shard
// that holds them, e at e − start + src. One invocation owns the aligned block of four
// elements 4·b..4·b+3 (b counts from floor(start/4)), so each Philox call yields all four normals
// it produces; blocks that straddle the shard's ends skip the elements outside it.
//
// Everything that changes per member or per iteration (seed, iteration, noise index, scale)
// is read from `params`, so one compiled pipeline serves every member of every tensor.

// struct Shard (one shard-table record) and the PERTURB_* word offsets of a perturb record come
// from kernels/records.ts, prepended by the wrapper.

// Perturb-params records, PARAM_WORDS u32 apart; workgroup z reads record z and writes its
// copy shard.member_stride elements further on in out (population batching; z is 0 alone).
// A record: run seed (lo32, hi32), iteration, noise index (antithetic member j ≥ K uses j − K,
// with a negative scale), and the scale ±σ_t as f32 bits.
@group(0) @binding(0) var<storage, read> shard: Shard;
@group(0) @binding(1) var<storage, read> params: array<u32>;
// Binding 2, θ, and `theta_at(i)`, its element i as f32, come from the wrapper: an f32 array,
// or bf16 pairs packed in u32 words (kernels/es_update.ts THETA_F32 / THETA_BF16).
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) groups: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  // A 128 MiB shard has 8M blocks, more than 65535 workgroups of 64: the grid is 2-D.
  let block = (shard.start >> 2u) + (wid.y * groups.x + wid.x) * WG + lid;
  let end = shard.start + shard.count;
  if (block * 4u >= end) {
    return;
  }
  let p = wid.z * PARAM_WORDS;
  let key = vec2u(params[p + PERTURB_SEED_LO], params[p + PERTURB_SEED_HI]);
  let eps = noise4(key, params[p + PERTURB_ITERATION], params[p + PERTURB_NOISE], shard.tensor, block);
  let s = bitcast<f32>(params[p + PERTURB_SCALE]) * shard.multiplier;
  let dst = shard.dst + wid.z * shard.member_stride;
  for (var k = 0u; k < 4u; k++) {
    let e = block * 4u + k;
    if (e >= shard.start && e < end) {
      out[e - shard.start + dst] = theta_at(e - shard.start + shard.src) + s * eps[k];
    }
  }
}
