// One record of a tensor's shard table (kernels/es_update.ts createShardTable), shared by the
// perturb and es_update kernels: which elements of which tensor a dispatch covers, and the
// tensor's group multiplier.
struct Shard {
  start: u32,       // first element of this shard in the whole tensor (rowStart·rowSize)
  count: u32,       // elements in this shard
  tensor: u32,      // tensor id: the Philox counter's second word
  numel: u32,       // elements in the whole tensor
  multiplier: f32,  // group multiplier m_g of this tensor
  src: u32,         // perturb only: index in the bound θ buffer of element `start` (0 for a
                    // whole shard; a chunk or piece inside a shard starts further in)
  dst: u32,         // perturb only: index in the bound out buffer of element `start`
  member_stride: u32, // perturb only: elements between members' copies in out (batched members)
}

