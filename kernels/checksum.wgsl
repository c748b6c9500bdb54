// A checksum of one tensor shard's f32 bit patterns, so processes can compare θ without reading
// it back. Legend: N = elements in the shard, BASE = index of its first element in the tensor.
// x is (N) f32 read as u32 bits; sums is (2) u32, two independent hashes of (index, bits).
//
// Every element contributes mix(bits, index) to wrapping u32 sums. Wrapping addition is
// associative and commutative, so the result does not depend on which invocation adds first:
// the same θ gives the same checksum on any adapter, whatever the scheduling.
// Constants: N, BASE, PER (elements per invocation), WG, GRID_X.
@group(0) @binding(0) var<storage, read> x: array<u32>;
@group(0) @binding(1) var<storage, read_write> sums: array<atomic<u32>>;

var<workgroup> local_a: atomic<u32>;
var<workgroup> local_b: atomic<u32>;

// The murmur3 finalizer: every input bit flips about half the output bits.
fn fmix(v: u32) -> u32 {
  var h = v;
  h ^= h >> 16u;
  h *= 0x85ebca6bu;
  h ^= h >> 13u;
  h *= 0xc2b2ae35u;
  h ^= h >> 16u;
  return h;
}

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
  @builtin(local_invocation_index) li: u32,
) {
  if (li == 0u) {
    atomicStore(&local_a, 0u);
    atomicStore(&local_b, 0u);
  }
  workgroupBarrier();
  let inv = (wid.y * GRID_X + wid.x) * WG + lid.x;
  var a = 0u;
  var b = 0u;
  // Contiguous runs per invocation keep the loads of a workgroup close together.
  let first = inv * PER;
  for (var k = 0u; k < PER; k++) {
    let i = first + k;
    if (i >= N) { break; }
    let g = BASE + i;
    let bits = x[i];
    a += fmix(bits ^ (g * 0x9e3779b9u));
    b += fmix((bits + 0x7f4a7c15u) ^ fmix(g + 0x165667b1u));
  }
  atomicAdd(&local_a, a);
  atomicAdd(&local_b, b);
  workgroupBarrier();
  if (li == 0u) {
    atomicAdd(&sums[0], atomicLoad(&local_a));
    atomicAdd(&sums[1], atomicLoad(&local_b));
  }
}
