// Linear layer: out[m, OUT_COL + n] (+)= Σ_k x[m, k] · w[W_ROW + n, k] (+ bias[BIAS_OFF + n])
// or, when SWIGLU, Qwen3's gate and up projections fused with their activation:
//   out[m, OUT_COL + n] = silu(Σ_k x[m, k] · w[W_ROW + n, k]) · (Σ_k x[m, k] · wu[U_ROW + n, k])
//
//   x    is (M, K) f32 row-major, read as (M, K4) vec4 with K4 = K / 4
//   w    is (N_total, K) in HF [out, in] layout; rows W_ROW .. W_ROW + N are used
//   bias is (N) at element BIAS_OFF (bound but never read when HAS_BIAS is false)
//   out  is (M, OUT_STRIDE); columns OUT_COL .. OUT_COL + N of each row are written,
//        added to when ACCUMULATE (a fused residual add)
//   wu   is (N_total', K), the up weights, rows U_ROW .. U_ROW + N; read only when SWIGLU (the
//        plain matmul's generated lines never name it, so its pipeline layout leaves it out)
//
// Every dimension and offset is a compile-time constant prepended by matmul.ts (wgslConsts), so
// the compiler sees constant trip counts and strides. Offsets are constants rather than binding
// offsets because binding offsets must be 32-byte aligned and element offsets need not be.
//
// The layout of work, and why (measured on lavapipe; the numbers are in kernels/matmul.ts):
// - Each invocation owns a TM × TN block of out in separate scalar accumulators c<i>_<j>.
//   lavapipe runs 8 invocations as the lanes of one SIMD register, and every storage load whose
//   address differs between lanes is a per-lane gather, so speed follows the FMAs per gathered
//   scalar, TM·TN / (TM + TN): bigger blocks are faster until the register spills cost more.
// - The accumulators are named scalars, not an array: an array indexed by a loop counter is
//   placed in scratch memory and ran 2.5× slower than the unrolled block. matmul.ts generates
//   the unrolled lines of the block at the three @tile markers below.
// - No workgroup memory and no barriers: a barrier makes lavapipe switch between invocations
//   as coroutines, and the classic shared-memory tiled kernel ran at a sixth of this speed.
// - A workgroup is WG_M × WG_N invocations covering (WG_M·TM) × (WG_N·TN) of out; the blocks
//   of workgroups are numbered row-major over (BLOCKS_M, BLOCKS_N) and laid out on a 2-D grid
//   GRID_X wide, so more than 65535 workgroups still fit the per-dimension dispatch limit.
// - SWIGLU: each invocation holds a TM × TN block of gate accumulators c<i>_<j> and one of up
//   accumulators u<i>_<j> over the same rows of x, so the TM gathers of x per step feed both
//   (TM + 2·TN gathers for 2·TM·TN dot products, where two matmuls take 2·TM + 2·TN), and gate
//   and up never go through memory before the activation.
// - Ragged edges: reads clamp the row index to the last valid row (the extra lanes compute
//   garbage from real data, never out of bounds) and stores are guarded.

@group(0) @binding(0) var<storage, read> x: array<vec4f>;
@group(0) @binding(1) var<storage, read> w: array<vec4f>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> wu: array<vec4f>;

// Population batching: workgroup z is the member. Member z's rows of x start X_MS4 vec4s further
// on, its weights W_MS4 vec4s (0: all members share w and wu), its bias B_MS and its out OUT_MS
// elements. All zero when the dispatch is one member (grid z = 1).
var<private> member_z: u32;

// Writes one element of out when it lies inside (M, N). The bias and residual reads happen once
// per output element, outside the K loop, so they cost nothing next to it.
fn store(r: u32, c: u32, v: f32) {
  if (r < M && c < N) {
    var y = v;
    if (HAS_BIAS) {
      y += bias[BIAS_OFF + member_z * B_MS + c];
    }
    let at = member_z * OUT_MS + r * OUT_STRIDE + OUT_COL + c;
    if (ACCUMULATE) {
      y += out[at];
    }
    out[at] = y;
  }
}

// SWIGLU's store: silu(g) · u, with silu(g) = g / (1 + e^-g) written as kernels/swiglu.wgsl
// writes it (for g ≪ 0, e^-g is inf and the result is −0, as in PyTorch).
fn store_swiglu(r: u32, c: u32, g: f32, u: f32) {
  store(r, c, g / (1.0 + exp(-g)) * u);
}

@compute @workgroup_size(WG_M * WG_N)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  member_z = wid.z;
  let block = wid.x + wid.y * GRID_X;
  if (block >= BLOCKS_M * BLOCKS_N) {
    return;
  }
  let row0 = ((block / BLOCKS_N) * WG_M + lid / WG_N) * TM;
  let col0 = ((block % BLOCKS_N) * WG_N + lid % WG_N) * TN;
  // No barriers follow, so an invocation wholly outside out may leave early.
  if (row0 >= M || col0 >= N) {
    return;
  }
  // @tile-setup: xo<i> = vec4 index of row min(row0 + i, M - 1) of x, wo<j> likewise for w,
  // and the TM·TN accumulators set to zero; when SWIGLU also uo<j> for wu and TM·TN more.
  //@tile-setup

  // One vec4 of K per step; unrolling this loop by hand measured no faster.
  for (var k = 0u; k < K4; k++) {
    // @tile-step: TM loads of x, TN loads of w, then c<i>_<j> += dot(a<i>, b<j>); when SWIGLU
    // also TN loads e<j> of wu and u<i>_<j> += dot(a<i>, e<j>).
    //@tile-step
  }

  // @tile-store: store(row0 + i, col0 + j, c<i>_<j>) for every accumulator, or when SWIGLU
  // store_swiglu(row0 + i, col0 + j, c<i>_<j>, u<i>_<j>).
  //@tile-store
}
