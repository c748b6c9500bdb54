// Embedding gather for one row shard of the table.
// Legend: R = token rows (B·T), H = hidden.
// ids is (R) u32, table is (ROWS, H) = rows [ROW_START, ROW_START + ROWS) of embed_tokens,
// x is (R, H). Each invocation copies one vec4 of one token row whose id falls in this shard;
// the other shards' dispatches write the remaining rows.
// Population batching: token rows come in blocks of RM per member, and member m's table starts
// T_MS4 vec4s further on (0: shared).
// Constants: R, H (multiple of 4), ROW_START, ROWS, RM, T_MS4, WG, GRID_X.
@group(0) @binding(0) var<storage, read> ids: array<u32>;
@group(0) @binding(1) var<storage, read> table: array<vec4f>;
@group(0) @binding(2) var<storage, read_write> x: array<vec4f>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i = (wid.y * GRID_X + wid.x) * WG + lid.x;
  if (i >= R * (H / 4u)) { return; }
  let row = i / (H / 4u);
  let c = i % (H / 4u);
  let id = ids[row];
  if (id < ROW_START || id >= ROW_START + ROWS) { return; }
  x[i] = table[(row / RM) * T_MS4 + (id - ROW_START) * (H / 4u) + c];
}
