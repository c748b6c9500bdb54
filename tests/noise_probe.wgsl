// noise_probe: test kernel exposing the noise library's raw output, so tests can compare the
// WGSL Philox with the known-answer vectors and with the TypeScript twin word for word.
//
// Shapes. For block i in 0..count: words[i] = Philox4x32-10(counter + (i,0,0,0), key), and
// normals[i] = noise4(key, counter.w, counter.z, counter.y, counter.x + i), which are the four
// normals of those same words when counter = (b0, tensor, member, iteration).

struct Probe {
  counter: vec4u,
  key: vec2u,
  count: u32,
}

@group(0) @binding(0) var<storage, read> probe: Probe;
@group(0) @binding(1) var<storage, read_write> words: array<vec4u>;
@group(0) @binding(2) var<storage, read_write> normals: array<vec4f>;

@compute @workgroup_size(64)
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) groups: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let i = (wid.y * groups.x + wid.x) * 64u + lid;
  if (i >= probe.count) {
    return;
  }
  let c = probe.counter + vec4u(i, 0u, 0u, 0u);
  words[i] = philox4x32_10(c, probe.key);
  normals[i] = noise4(probe.key, c.w, c.z, c.y, c.x);
}
