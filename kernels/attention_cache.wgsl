// Attention of new queries over the KV cache (kernels/kv_cache.ts): GQA with an online softmax in
// f32, each query over its sequence's cached keys up to its own position.
// Legend: S = sequences (members·B), TN = new tokens per sequence, R = S·TN query rows,
// NH = query heads, NKV = kv heads, D = head_dim, SLOTS = cache slots per sequence.
// q is (R, NH, D): row r is token r % TN of sequence r / TN, at position p = pos[r / TN] + r % TN.
// kc and vc are (S, SLOTS, NKV, D); pos is (S) u32. out is (R, NH, D).
// Query head h reads kv head h / (NH / NKV), as HF's repeat_kv. A query at position p attends
// slots 0..min(p, SLOTS − 1): the cache holds the sequence's tokens at their positions (the
// prompt's and the generated ones), so causality is the only mask; slots past p may hold a
// padding row's keys and are never read.
// Scores are (q · D^-0.5)·k; softmax runs online (running max and sum), rescaling only when the
// maximum grows, as kernels/attention.wgsl.
// One invocation per (row, head); the query and the accumulator live in named vec4 registers
// (q_j, a_j) written out by the wrapper at the //@ markers (lavapipe keeps loop-indexed private
// arrays in memory).
// Constants: R, TN, NH, NKV, D (multiple of 4), SLOTS, SCALE, WG, GRID_X.
@group(0) @binding(0) var<storage, read> q: array<vec4f>;
@group(0) @binding(1) var<storage, read> kc: array<vec4f>;
@group(0) @binding(2) var<storage, read> vc: array<vec4f>;
@group(0) @binding(3) var<storage, read> pos: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4f>;

const D4: u32 = D / 4u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = (wid.y * GRID_X + wid.x) * WG + lid.x;
  if (i >= R * NH) { return; }
  let h = i % NH;
  let row = i / NH;
  let seq = row / TN;
  let g = h / (NH / NKV);
  let last = min(pos[seq] + row % TN, SLOTS - 1u);
  let qb = i * D4;
  //@q-load
  var m = -3.0e38;
  var l = 0.0;
  for (var s = 0u; s <= last; s++) {
    let kBase = ((seq * SLOTS + s) * NKV + g) * D4;
    //@score
    let sc = d.x + d.y + d.z + d.w;
    if (sc > m) {
      let c = exp(m - sc);
      l *= c;
      //@rescale
      m = sc;
    }
    let p = exp(sc - m);
    l += p;
    //@accumulate
  }
  let inv = select(0.0, 1.0 / l, l > 0.0);
  //@store
}
