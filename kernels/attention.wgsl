// Causal grouped-query attention with a key-padding mask and an online softmax, in f32.
// Legend: B = batch, T = sequence length, NH = query heads, NKV = kv heads, D = head_dim.
// q is (B·T, NH, D), k and v are (B·T, NKV, D), mask is (B·T) u32 (1 = real token, 0 = pad),
// out is (B·T, NH, D). Query head h reads kv head h / (NH / NKV), as HF's repeat_kv.
// Scores are q·k · D^-0.5 over keys s ≤ t with mask 1; softmax runs online (running max and
// sum), so no (T, T) score matrix exists. One invocation per (b, h, t).
// Constants: B, T, NH, NKV, D (multiple of 4), SCALE, WG, GRID_X.
@group(0) @binding(0) var<storage, read> q: array<vec4f>;
@group(0) @binding(1) var<storage, read> k: array<vec4f>;
@group(0) @binding(2) var<storage, read> v: array<vec4f>;
@group(0) @binding(3) var<storage, read> mask: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4f>;

const D4: u32 = D / 4u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = (wid.y * GRID_X + wid.x) * WG + lid.x;
  if (i >= B * NH * T) { return; }
  // t varies fastest so neighbouring lanes share (b, h) and walk the same keys.
  let t = i % T;
  let h = (i / T) % NH;
  let b = i / (T * NH);
  let g = h / (NH / NKV);
  let qBase = ((b * T + t) * NH + h) * D4;
  var qv: array<vec4f, D4>;
  var acc: array<vec4f, D4>;
  for (var j = 0u; j < D4; j++) {
    qv[j] = q[qBase + j] * SCALE;
    acc[j] = vec4f(0.0);
  }
  var m = -3.0e38;
  var l = 0.0;
  for (var s = 0u; s <= t; s++) {
    let row = b * T + s;
    if (mask[row] == 0u) { continue; }
    let kBase = (row * NKV + g) * D4;
    var dv = vec4f(0.0);
    for (var j = 0u; j < D4; j++) {
      dv += qv[j] * k[kBase + j];
    }
    let score = dv.x + dv.y + dv.z + dv.w;
    let mNew = max(m, score);
    let corr = exp(m - mNew);
    let p = exp(score - mNew);
    l = l * corr + p;
    for (var j = 0u; j < D4; j++) {
      acc[j] = acc[j] * corr + p * v[kBase + j];
    }
    m = mNew;
  }
  let inv = select(0.0, 1.0 / l, l > 0.0);
  for (var j = 0u; j < D4; j++) {
    out[qBase + j] = acc[j] * inv;
  }
}
