// The paper's per-sample fitness R(x;θ) from the streamed log-softmax state.
// Legend: B = samples, T = tokens per sample (padded).
// targets is (B·T) u32 (0xffffffff where position t has no scored next token: t = T−1 or
// mask[t+1] = 0), state is (B·T, 3) = (max, sum, target logit) after the last chunk,
// r is (B) f32: R_b = Σ_t log p(x_{t+1} | x_≤t) / #scored, log p = z_target − (m + log s).
// COMPACT: state holds the scored rows alone, in row order (the LM head ran over those only),
// so row (b, t)'s state is at the count of scored rows before it; each invocation counts those
// of the samples before its own (B·T reads of targets, nothing next to the head).
// Constants: B, T, COMPACT, WG, GRID_X.
@group(0) @binding(0) var<storage, read> targets: array<u32>;
@group(0) @binding(1) var<storage, read> state: array<f32>;
@group(0) @binding(2) var<storage, read_write> r: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let b = (wid.y * GRID_X + wid.x) * WG + lid.x;
  if (b >= B) { return; }
  // The loop bounds are opaque to the compiler (wid.z is 0 in this 1-D launch): kernels/program.ts
  // launch says why.
  let tn = max(T, wid.z);
  var sum = 0.0;
  var n = 0u;
  var at = 0u;
  if (COMPACT) {
    for (var row = 0u; row < b * T; row++) {
      if (targets[row] != 0xffffffffu) { at++; }
    }
  }
  for (var t = 0u; t < tn; t++) {
    let row = b * T + t;
    if (targets[row] == 0xffffffffu) { continue; }
    let s = select(row, at + n, COMPACT);
    sum += state[3u * s + 2u] - (state[3u * s] + log(state[3u * s + 1u]));
    n++;
  }
  r[b] = select(0.0, sum / f32(n), n > 0u);
}
