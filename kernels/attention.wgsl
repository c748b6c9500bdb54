// Causal grouped-query attention with a key-padding mask and an online softmax, in f32.
// Legend: B = batch, T = sequence length, NH = query heads, NKV = kv heads, D = head_dim.
// q is (B·T, NH, D), k and v are (B·T, NKV, D), mask is (B·T) u32 (1 = real token, 0 = pad),
// out is (B·T, NH, D). Query head h reads kv head h / (NH / NKV), as HF's repeat_kv.
// Scores are q·k · D^-0.5 over keys s ≤ t with mask 1; softmax runs online (running max and
// sum), so no (T, T) score matrix exists.
// One invocation owns QB consecutive queries t0..t0+QB−1 of one (b, h): each key and value row
// is loaded once into registers and used by all QB queries, as a matmul's register tile reuses
// its loads. Queries, keys, values and accumulators live in named vec4 registers written out
// by the wrapper at the //@ markers (lavapipe keeps loop-indexed private arrays in memory).
// A query's running sum is rescaled only when its maximum grows.
// Constants: B, T, NH, NKV, D (multiple of 4), QB, SCALE, WG, GRID_X.
@group(0) @binding(0) var<storage, read> q: array<vec4f>;
@group(0) @binding(1) var<storage, read> k: array<vec4f>;
@group(0) @binding(2) var<storage, read> v: array<vec4f>;
@group(0) @binding(3) var<storage, read> mask: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4f>;

const D4: u32 = D / 4u;
const TB: u32 = (T + QB - 1u) / QB;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = (wid.y * GRID_X + wid.x) * WG + lid.x;
  if (i >= B * NH * TB) { return; }
  // The query block varies fastest so neighbouring lanes share (b, h) and walk the same keys.
  let t0 = (i % TB) * QB;
  let h = (i / TB) % NH;
  let b = i / (TB * NH);
  let g = h / (NH / NKV);
  //@q-load
  let last = min(t0 + QB, T) - 1u;
  for (var s = 0u; s <= last; s++) {
    let row = b * T + s;
    if (mask[row] == 0u) { continue; }
    let kBase = (row * NKV + g) * D4;
    //@kv-load
    //@queries
  }
  //@store
}
