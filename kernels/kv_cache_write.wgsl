// The KV-cache write of one decode step (kernels/kv_cache.ts): each new token's key and value
// rows into its sequence's slot.
// Legend: S = sequences (members·B), TN = new tokens per sequence, R = S·TN rows,
// SLOTS = cache slots per sequence, E4 = NKV·D/4 (one token's keys, in vec4s).
// k and v are (R, NKV·D): row r is token r % TN of sequence r / TN. pos is (S) u32, the slot of
// each sequence's first new token. kc and vc are (S, SLOTS, NKV·D): row r goes to slot
// pos[r / TN] + r % TN of its sequence; a slot at or past SLOTS (a padding row) is not written.
// Constants: R, TN, SLOTS, E4, WG, GRID_X.
@group(0) @binding(0) var<storage, read> k: array<vec4f>;
@group(0) @binding(1) var<storage, read> v: array<vec4f>;
@group(0) @binding(2) var<storage, read> pos: array<u32>;
@group(0) @binding(3) var<storage, read_write> kc: array<vec4f>;
@group(0) @binding(4) var<storage, read_write> vc: array<vec4f>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = (wid.y * GRID_X + wid.x) * WG + lid.x;
  if (i >= R * E4) { return; }
  let row = i / E4;
  let e = i % E4;
  let seq = row / TN;
  let slot = pos[seq] + row % TN;
  if (slot >= SLOTS) { return; }
  let at = (seq * SLOTS + slot) * E4 + e;
  kc[at] = k[i];
  vc[at] = v[i];
}
