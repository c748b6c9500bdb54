// Adds one micro-batch's per-sample fitness into a member's running total.
// Legend: B = samples in the micro-batch. r is (B) f32; totals is one f32 per member slot,
// SLOT_WORDS apart; params are the perturb records of the group being evaluated (PARAM_WORDS
// apart), and the slot field of record MEMBER (word PERTURB_SLOT, kernels/records.ts) is where
// its total goes. Reading the slot from the
// record, not binding it, lets every group of members run the same steps. One invocation: B is
// small and a sequential sum keeps the order, and so the bits, fixed from run to run.
// r[R_OFF..R_OFF + B) are the samples added (one member's block when members are batched).
// Constants: B, R_OFF, MEMBER, PARAM_WORDS, SLOT_WORDS, WG, GRID_X.
@group(0) @binding(0) var<storage, read> r: array<f32>;
@group(0) @binding(1) var<storage, read_write> totals: array<f32>;
@group(0) @binding(2) var<storage, read> params: array<u32>;

@compute @workgroup_size(WG)
fn main() {
  let at = params[MEMBER * PARAM_WORDS + PERTURB_SLOT] * SLOT_WORDS;
  var s = totals[at];
  for (var b = 0u; b < B; b++) {
    s += r[R_OFF + b];
  }
  totals[at] = s;
}
