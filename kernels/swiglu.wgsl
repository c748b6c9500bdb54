// SwiGLU activation of Qwen3's MLP, in place: gate = silu(gate) · up.
// Legend: R = token rows, I = intermediate width. gate and up are (R, I); N4 = R·I/4 vec4s.
// silu(x) = x / (1 + e^-x); for x ≪ 0 e^-x is inf and the result is −0, as in PyTorch.
// Constants: N4, WG, GRID_X.
@group(0) @binding(0) var<storage, read_write> gate: array<vec4f>;
@group(0) @binding(1) var<storage, read> up: array<vec4f>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = (wid.y * GRID_X + wid.x) * WG + lid.x;
  if (i >= N4) { return; }
  let g = gate[i];
  gate[i] = g / (vec4f(1.0) + exp(-g)) * up[i];
}
