// One vocabulary chunk of the streamed log-softmax: folds a chunk of logits into each row's
// running max, running sum of exponentials, and the logit of its target token.
// Legend: R = token rows (B·T), C = chunk width, V = vocab.
// logits is (R, C) = z[:, C0 .. C0+C), targets is (R) u32 (0xffffffff: no target),
// state is (R, 3) f32: (max m, sum s of e^(z−m), target logit). The full (R, V) logits never
// exist: only one (R, C) chunk at a time. One invocation per row. A row with no target (the
// last position, padding) is skipped, its state left as it was: log_likelihood never reads it,
// and a text eval's padded rows are a third of its logits.
// Constants: R, C, C0, FIRST (the first chunk initialises the state), WG, GRID_X.
@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<u32>;
@group(0) @binding(2) var<storage, read_write> state: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let r = (wid.y * GRID_X + wid.x) * WG + lid.x;
  if (r >= R) { return; }
  let t = targets[r];
  if (t == 0xffffffffu) { return; }
  var m = -3.0e38;
  var s = 0.0;
  var tg = 0.0;
  if (!FIRST) {
    m = state[3u * r];
    s = state[3u * r + 1u];
    tg = state[3u * r + 2u];
  }
  let base = r * C;
  var cm = -3.0e38;
  for (var j = 0u; j < C; j++) {
    cm = max(cm, logits[base + j]);
  }
  let mNew = max(m, cm);
  var cs = 0.0;
  for (var j = 0u; j < C; j++) {
    cs += exp(logits[base + j] - mNew);
  }
  s = s * exp(m - mNew) + cs;
  if (t >= C0 && t < C0 + C) {
    tg = logits[base + (t - C0)];
  }
  state[3u * r] = mNew;
  state[3u * r + 1u] = s;
  state[3u * r + 2u] = tg;
}
