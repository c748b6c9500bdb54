// Adds one micro-batch's per-sample fitness into a member's running total.
// Legend: B = samples in the micro-batch. r is (B) f32; total is one f32, the member's slot,
// bound at its own offset so one pipeline serves every member. One invocation: B is small and
// a sequential sum keeps the order, and so the bits, fixed from run to run.
// r[R_OFF..R_OFF + B) are the samples added (one member's block when members are batched).
// Constants: B, R_OFF, WG, GRID_X.
@group(0) @binding(0) var<storage, read> r: array<f32>;
@group(0) @binding(1) var<storage, read_write> total: array<f32>;

@compute @workgroup_size(WG)
fn main() {
  var s = total[0];
  for (var b = 0u; b < B; b++) {
    s += r[R_OFF + b];
  }
  total[0] = s;
}
