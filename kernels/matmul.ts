/**
 * The linear-layer matmul: out[m, n] (+)= Σ_k x[m, k] · w[n, k] (+ bias[n]), with the weights
 * left in HuggingFace's [out, in] layout.
 *
 * Shapes: x is (M, K), w is (N, K) (a row range of a larger (N_total, K) buffer), bias is (N),
 * out is (M, outStride) with N columns written from outColOffset. K must be a multiple of 4,
 * because x and w are read as vec4 along K.
 *
 * The same template, generated with a second block of accumulators, also fuses Qwen3's MLP
 * activation: {@link matmulSwigluStep} computes silu(x · Wgᵀ) · (x · Wuᵀ) in one dispatch, with
 * Wg and Wu both (N, K), where the unfused forward runs two matmuls and kernels/swiglu.wgsl.
 *
 * The kernel is kernels/matmul.wgsl; this module fills in its compile-time constants, generates
 * the unrolled per-invocation block (see the notes at the top of the .wgsl), picks a tile per
 * shape and builds {@link Step}s.
 *
 * Tests: tests/matmul_test.ts (ragged shapes, fused SwiGLU, members against matmulReference), tests/native_test.ts (CPU).
 *
 * @module
 */
import { cachedTile } from "./tile_cache.ts";
import type { Binding, Device, DeviceBuffer } from "./device.ts";
import { dispatch, fillMarkers, type Step, wgslConsts, wgslSource } from "./program.ts";
import type { DeviceTensor } from "./tensor.ts";

/** The block of out one invocation computes: tm rows by tn columns. */
export interface MatmulTile {
  tm: number;
  tn: number;
}

/** Options of {@link matmulStep}. Offsets and strides are in f32 elements. */
export interface MatmulOptions {
  /** What this step computes, e.g. "layer3.q_proj". */
  label: string;
  /** (M, K) f32 row-major. */
  x: DeviceBuffer;
  /** Rows of x. */
  m: number;
  /** Inner dimension; must be a multiple of 4. */
  k: number;
  /** Holds rows of W (N_total, K) in [out, in] layout. */
  w: DeviceBuffer;
  /** First row of W inside `w` to use. Default 0. */
  wRowOffset?: number;
  /** Rows of W used, which is the number of output columns. */
  n: number;
  /** (n) values read at biasOffset + column. */
  bias?: DeviceBuffer;
  /** Element offset of the bias inside `bias`. Default 0. */
  biasOffset?: number;
  /** (M, outStride) f32. Must not be the same buffer as x, w or bias. */
  out: DeviceBuffer;
  /** Row stride of out in elements. Default n. */
  outStride?: number;
  /** First column of out written. Default 0. */
  outColOffset?: number;
  /** out += result instead of out = result (fuses a residual add). Default false. */
  accumulate?: boolean;
  /** Several members in one dispatch ({@link MatmulMembers}). Default one. */
  members?: MatmulMembers;
  /** Block per invocation. Default {@link defaultMatmulTile} for this shape and adapter. */
  tile?: MatmulTile;
  /** Expected runs of this pipeline, for the default tile ({@link defaultMatmulTile}). */
  runs?: number;
}

/** The tiles the default selection chooses among, smallest first. Any tm, tn ≥ 1 also works. */
export const MATMUL_TILES: readonly MatmulTile[] = [
  { tm: 4, tn: 4 },
  { tm: 8, tn: 4 },
  { tm: 8, tn: 8 },
  { tm: 16, tn: 8 },
  { tm: 16, tn: 16 },
  { tm: 32, tn: 16 },
  { tm: 32, tn: 32 },
];

/** Invocations per workgroup (on lavapipe the workgroup shape hardly mattered at 8 or more). */
const WORKGROUP = 64;

/**
 * What the default selection knows of a tile on lavapipe: its speed and its cold compile time.
 */
interface TileCost {
  /** GFLOP/s at 1024³ (for the fused kernel: on the tiny model's MLP shape, see below). */
  gflops: number;
  /** Seconds lavapipe takes to compile its pipeline with an empty shader cache (K = 128). */
  compileS: number;
}

/**
 * Each tile on llvmpipe (LLVM 15.0.6, 256 bits) over lavapipe, 2 cores of an AMD EPYC (Zen 3,
 * AVX2), both columns measured in one session: speed with `deno run -A tools/bench_matmul.ts
 * --repeats 3 --shape 1024x1024x1024 --tile T` (GPU timestamps), compile time as the first
 * dispatch of `--shape 64x128x64 --tile T` under MESA_SHADER_CACHE_DISABLE=true (the run itself
 * is under 2 ms there). A faster CPU shrinks both, not equally (a Zen 5 ran these tiles 5–9×
 * faster and compiled them about 2.5× faster), so there compiling weighs somewhat more than this
 * table says; what the selection makes of it holds either way: small tiles for a few runs, the
 * fastest for many. A GPU would need its own table.
 */
const LAVAPIPE_TILES: Record<string, TileCost> = {
  "4x4": { gflops: 1.1, compileS: 0.13 },
  "8x4": { gflops: 1.4, compileS: 0.23 },
  "8x8": { gflops: 2.0, compileS: 0.44 },
  "16x8": { gflops: 2.7, compileS: 0.83 },
  "16x16": { gflops: 3.8, compileS: 2.2 },
  "32x16": { gflops: 5.1, compileS: 6.6 },
  "32x32": { gflops: 6.8, compileS: 23 },
};

/**
 * Work below which 32×32 is left out of a default that weighs speed alone. It is the fastest
 * tile on every benchmarked shape, but its unrolled block of 1024 accumulators takes 23 s to
 * compile on lavapipe (cold; Mesa then caches it on disk), and every distinct shape or offset is
 * its own pipeline. Only a big matmul (≥ 2 GFLOP, the size of 1024³) repays it.
 */
const BIG_TILE_MIN_FLOPS = 2 ** 31;

/**
 * The default tile for an (m, k, n) matmul: the one with the least estimated time, where the time
 * is the rounds of workgroups the cores run (ceil(workgroups / cores)) times the padded work of
 * one workgroup over the tile's measured speed. Small m or n thus get small tiles, so there are
 * enough workgroups for every core and little padding at the ragged edges.
 *
 * `runs`: how many times the pipeline will run in this process. Left out (a training run, where
 * it runs thousands of times), speed alone decides; given, the estimate is the tile's cold
 * compile time plus `runs` times its run time, so a one-off eval gets tiles that compile in a
 * fraction of a second where the fastest would take seconds to compile and milliseconds to run.
 *
 * On adapters other than llvmpipe/lavapipe nothing has been measured: a GPU has thousands of
 * lanes and wants many workgroups, so it gets 4×4 blocks. Either way a tile tuned for this
 * adapter and shape (kernels/tile_cache.ts) wins.
 */
export function defaultMatmulTile(
  device: Device,
  shape: { m: number; k: number; n: number },
  runs = Infinity,
): MatmulTile {
  // A tile measured on this very adapter and shape (deno task bench --tune) beats any model.
  const tuned = cachedTile(device.name, shape);
  if (tuned) return { tm: tuned.tm, tn: tuned.tn };
  if (!/llvmpipe|lavapipe/i.test(device.name)) return { tm: 4, tn: 4 };
  return fastestTile(device, shape, MATMUL_TILES, LAVAPIPE_TILES, runs);
}

/**
 * The tiles the fused {@link matmulSwigluStep} default chooses among, smallest first. Each holds
 * 2·tm·tn accumulators, so 32×16 counts as big (1024, 10.5 s to compile cold against 3.9 s for
 * 16×16) and is chosen only above {@link BIG_TILE_MIN_FLOPS}, like the plain 32×32.
 */
export const MATMUL_SWIGLU_TILES: readonly MatmulTile[] = [
  { tm: 4, tn: 4 },
  { tm: 8, tn: 4 },
  { tm: 8, tn: 8 },
  { tm: 16, tn: 8 },
  { tm: 16, tn: 16 },
  { tm: 32, tn: 16 },
];

/**
 * Each fused tile on the same llvmpipe and machine as {@link LAVAPIPE_TILES}, in the same
 * session: speed counting 4·m·k·n per dispatch (both projections) on the tiny model's MLP shape
 * m = 2048, k = 128, n = 384 (`deno run -A tools/bench_matmul.ts --swiglu --rounds 3 --shape
 * 2048x128x384 --tile T`: 32×16 ran in 63 ms, 16×16 in 80, gate + up matmuls and the swiglu
 * kernel in 88–104), compile time as the first dispatch of `--swiglu --shape 64x128x64` on a
 * cold cache. Earlier, on a Zen 5, at m = 1024, k = 1024, n = 2816: 32×16 37.4, 32×12 34.8,
 * 16×16 31.3 GFLOP/s, 32×16 tying two 32×32 matmuls; 16×32 and 32×8 were slower.
 */
const LAVAPIPE_SWIGLU_TILES: Record<string, TileCost> = {
  "4x4": { gflops: 1.4, compileS: 0.22 },
  "8x4": { gflops: 1.9, compileS: 0.24 },
  "8x8": { gflops: 2.5, compileS: 0.72 },
  "16x8": { gflops: 3.9, compileS: 1.3 },
  "16x16": { gflops: 5.0, compileS: 3.9 },
  "32x16": { gflops: 6.4, compileS: 10.5 },
};

/**
 * The default tile of {@link matmulSwigluStep} for out (m, n) and inner size k: as
 * {@link defaultMatmulTile} (`runs` too), over the fused kernel's own measured speeds and compile
 * times (each invocation holds 2·tm·tn accumulators). The tile cache holds plain matmul tiles
 * only, so it is not consulted.
 */
export function defaultMatmulSwigluTile(
  device: Device,
  shape: { m: number; k: number; n: number },
  runs = Infinity,
): MatmulTile {
  if (!/llvmpipe|lavapipe/i.test(device.name)) return { tm: 4, tn: 4 };
  return fastestTile(device, shape, MATMUL_SWIGLU_TILES, LAVAPIPE_SWIGLU_TILES, runs, 2);
}

/**
 * Of `tiles`, the one with the least estimated time on lavapipe: the rounds of workgroups the
 * cores run (ceil(workgroups / cores)) times the padded work of one workgroup over one core's
 * share of the tile's measured speed, times `runs`, plus the tile's cold compile time when `runs`
 * is finite. With `runs` infinite (speed alone) a tile of 1024 or more accumulators (tm·tn times
 * `accumulatorsPerOutput`) is left out below {@link BIG_TILE_MIN_FLOPS} of work.
 */
function fastestTile(
  device: Device,
  shape: { m: number; k: number; n: number },
  tiles: readonly MatmulTile[],
  costs: Record<string, TileCost>,
  runs: number,
  accumulatorsPerOutput = 1,
): MatmulTile {
  if (!(runs > 0)) throw new Error(`matmul tile: runs must be positive, got ${runs}`);
  // lavapipe runs one thread per CPU core.
  const cores = Math.max(1, navigator.hardwareConcurrency ?? 1);
  const flops = 2 * shape.m * shape.n * shape.k * accumulatorsPerOutput;
  let best = tiles[0];
  let bestTime = Infinity;
  for (const tile of tiles) {
    const big = accumulatorsPerOutput * tile.tm * tile.tn >= 1024;
    if (runs === Infinity && big && flops < BIG_TILE_MIN_FLOPS) continue;
    const cost = costs[tileKey(tile)];
    const g = matmulGrid(device, { m: shape.m, n: shape.n }, tile);
    const blockFlops = 2 * WORKGROUP * tile.tm * tile.tn * shape.k * accumulatorsPerOutput;
    const once = Math.ceil(g.blocksM * g.blocksN / cores) * blockFlops * cores /
      (cost.gflops * 1e9);
    const time = runs === Infinity ? once : cost.compileS + runs * once;
    if (time < bestTime * 0.999) {
      best = tile;
      bestTime = time;
    }
  }
  return best;
}

/** How the out matrix is cut into workgroup blocks for a tile, and the dispatch grid. */
interface MatmulGrid {
  wgM: number;
  wgN: number;
  blocksM: number;
  blocksN: number;
  gridX: number;
  gridY: number;
}

/**
 * Picks the workgroup's shape (wgM × wgN = 64 invocations) that wastes the fewest padded
 * invocations on this (m, n), ties going to the squarer shape, and lays the blocks on a grid that
 * respects maxComputeWorkgroupsPerDimension.
 */
function matmulGrid(device: Device, shape: { m: number; n: number }, tile: MatmulTile): MatmulGrid {
  const tilesM = Math.ceil(shape.m / tile.tm);
  const tilesN = Math.ceil(shape.n / tile.tn);
  let best: { wgM: number; blocksM: number; blocksN: number } | null = null;
  let bestCost = Infinity;
  for (let wgM = 1; wgM <= WORKGROUP; wgM *= 2) {
    const wgN = WORKGROUP / wgM;
    const blocksM = Math.ceil(tilesM / wgM);
    const blocksN = Math.ceil(tilesN / wgN);
    // Padded invocations, then squareness as a tie-break (a fraction below one invocation).
    const cost = blocksM * blocksN * WORKGROUP + Math.abs(Math.log2(wgM / wgN)) / 64;
    if (cost < bestCost) {
      bestCost = cost;
      best = { wgM, blocksM, blocksN };
    }
  }
  const { wgM, blocksM, blocksN } = best!;
  const blocks = blocksM * blocksN;
  const max = device.limits.maxComputeWorkgroupsPerDimension;
  const gridX = Math.min(blocks, max);
  const gridY = Math.ceil(blocks / gridX);
  if (gridY > max) {
    throw new Error(
      `matmul: ${blocks} workgroups exceed a ${max}×${max} grid; use a larger tile`,
    );
  }
  return { wgM, wgN: WORKGROUP / wgM, blocksM, blocksN, gridX, gridY };
}

let template: string | null = null;

/**
 * The kernel source for one tile: the .wgsl with its @tile markers replaced by unrolled lines.
 * With `swiglu` the lines also hold the up weights' offsets uo<j>, loads e<j> and accumulators
 * u<i>_<j>, and store through store_swiglu.
 */
function matmulSource(tile: MatmulTile, swiglu = false): string {
  template ??= wgslSource(new URL("./matmul.wgsl", import.meta.url));
  const rows = [...Array(tile.tm).keys()];
  const cols = [...Array(tile.tn).keys()];
  const block = (line: (i: number, j: number) => string) =>
    rows.flatMap((i) => cols.map((j) => line(i, j)));
  const setup = [
    ...rows.map((i) => `let xo${i} = member_z * X_MS4 + min(row0 + ${i}u, M - 1u) * K4;`),
    ...cols.map((j) => `let wo${j} = member_z * W_MS4 + (W_ROW + min(col0 + ${j}u, N - 1u)) * K4;`),
    ...(swiglu
      ? cols.map((j) => `let uo${j} = member_z * W_MS4 + (U_ROW + min(col0 + ${j}u, N - 1u)) * K4;`)
      : []),
    ...block((i, j) => `var c${i}_${j} = 0.0;`),
    ...(swiglu ? block((i, j) => `var u${i}_${j} = 0.0;`) : []),
  ];
  const step = [
    ...rows.map((i) => `let a${i} = x[xo${i} + k];`),
    ...cols.map((j) => `let b${j} = w[wo${j} + k];`),
    ...(swiglu ? cols.map((j) => `let e${j} = wu[uo${j} + k];`) : []),
    ...block((i, j) => `c${i}_${j} += dot(a${i}, b${j});`),
    ...(swiglu ? block((i, j) => `u${i}_${j} += dot(a${i}, e${j});`) : []),
  ];
  const store = swiglu
    ? block((i, j) => `store_swiglu(row0 + ${i}u, col0 + ${j}u, c${i}_${j}, u${i}_${j});`)
    : block((i, j) => `store(row0 + ${i}u, col0 + ${j}u, c${i}_${j});`);
  return fillMarkers("matmul.wgsl", template, {
    "tile-setup": setup,
    "tile-step": step,
    "tile-store": store,
  });
}

/** Throws unless m, k, n are positive, k is a multiple of 4 and the offsets are ≥ 0. */
function checkSizes(
  where: string,
  sizes: { m: number; k: number; n: number },
  offsets: Record<string, number>,
): void {
  for (const [name, v] of Object.entries(sizes)) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`${where}: ${name} must be ≥ 1, got ${v}`);
  }
  if (sizes.k % 4 !== 0) {
    throw new Error(
      `${where}: k = ${sizes.k} is not a multiple of 4; x and w are read as vec4 along k (pad k)`,
    );
  }
  for (const [name, v] of Object.entries(offsets)) {
    if (!Number.isInteger(v) || v < 0) throw new Error(`${where}: ${name} must be ≥ 0, got ${v}`);
  }
  const { outStride, outColOffset } = offsets;
  const end = outColOffset + sizes.n;
  if (end > outStride) {
    throw new Error(`${where}: columns ${outColOffset}..${end} do not fit a row of ${outStride}`);
  }
}

/** Throws unless `buffer` holds `elements` f32 and fits one binding. */
function checkBuffer(
  device: Device,
  where: string,
  name: string,
  buffer: DeviceBuffer,
  elements: number,
): void {
  if (buffer.size < elements * 4) {
    throw new Error(
      `${where}: ${name} holds ${buffer.size} bytes, needs ${elements * 4} (${elements} f32)`,
    );
  }
  if (buffer.size > device.limits.maxStorageBufferBindingSize) {
    throw new Error(
      `${where}: ${name} is ${buffer.size} bytes, over this adapter's binding limit ` +
        `${device.limits.maxStorageBufferBindingSize}; shard it (kernels/tensor.ts)`,
    );
  }
}

/** Throws unless `tile` has positive integer tm and tn. */
function checkTile(where: string, tile: MatmulTile): void {
  if (![tile.tm, tile.tn].every((t) => Number.isInteger(t) && t >= 1)) {
    throw new Error(`${where}: tile ${JSON.stringify(tile)} needs positive integer tm and tn`);
  }
}

/**
 * Population batching: `count` members in one dispatch (grid z = count). Member z reads x from
 * z·x, the weights from z·w (0: shared by all members), the bias from z·bias, and writes out from
 * z·out; all in f32 elements, x and w multiples of 4. With count 1 the strides are unused.
 */
export interface MatmulMembers {
  count: number;
  x: number;
  w: number;
  out: number;
  bias?: number;
}

/** The member constants of matmul.wgsl, checking the strides. */
function memberConsts(where: string, mb: MatmulMembers | undefined): Record<string, number> {
  if (!mb || mb.count === 1) return { X_MS4: 0, W_MS4: 0, OUT_MS: 0, B_MS: 0 };
  const { count, x, w, out, bias = 0 } = mb;
  if (!(Number.isInteger(count) && count >= 1)) {
    throw new Error(`${where}: members.count must be a positive integer, got ${count}`);
  }
  for (const [name, v] of Object.entries({ x, w, out, bias })) {
    if (!(Number.isInteger(v) && v >= 0)) {
      throw new Error(`${where}: member stride ${name} must be ≥ 0, got ${v}`);
    }
  }
  if (x % 4 !== 0 || w % 4 !== 0) {
    throw new Error(`${where}: member strides of x and w must be multiples of 4, got ${x}, ${w}`);
  }
  return { X_MS4: x / 4, W_MS4: w / 4, OUT_MS: out, B_MS: bias };
}

/**
 * The buffer checks matmulStep and matmulSwigluStep share: x, each weight operand and out hold
 * what every member reads or writes, within the binding limit, and out is none of the inputs.
 */
function checkOperands(
  device: Device,
  where: string,
  o: {
    x: DeviceBuffer;
    out: DeviceBuffer;
    m: number;
    k: number;
    n: number;
    outStride: number;
    outColOffset: number;
    members?: MatmulMembers;
  },
  weights: { name: string; buffer: DeviceBuffer; elements: number; stride: number }[],
): void {
  const mb = o.members;
  checkBuffer(device, where, "x", o.x, forMembers(o.m * o.k, mb?.x ?? 0, mb));
  for (const w of weights) {
    checkBuffer(device, where, w.name, w.buffer, forMembers(w.elements, w.stride, mb));
  }
  const last = (o.m - 1) * o.outStride + o.outColOffset + o.n;
  checkBuffer(device, where, "out", o.out, forMembers(last, mb?.out ?? 0, mb));
  if (o.out === o.x || weights.some((w) => w.buffer === o.out)) {
    throw new Error(
      `${where}: out must not be the same buffer as x, ${weights.map((w) => w.name).join(" or ")}`,
    );
  }
}

/** f32 elements a buffer needs for `one` member's elements at `stride` apart, `count` times. */
function forMembers(one: number, stride: number, mb: MatmulMembers | undefined): number {
  return ((mb?.count ?? 1) - 1) * stride + one;
}

/**
 * Where out is bound: from column `col` on when that is a valid binding offset, so the kernel's
 * OUT_COL is 0 and the column pieces of one layer (row chunks of a matrix, shards) share one
 * pipeline; otherwise the whole buffer with OUT_COL = col compiled in.
 */
function outBinding(
  device: Device,
  out: DeviceBuffer,
  col: number,
): { binding: Binding; col: number } {
  const at = offsetBinding(device, out, col);
  return { binding: at.binding, col: at.elements };
}

/**
 * `buffer` bound from f32 element `elements` on when that byte offset meets the device's
 * binding alignment (the kernel then indexes from 0), else bound whole with the offset left to
 * the kernel. Offsets moved into the binding keep them out of the kernel's constants, so
 * dispatches that differ only there share one pipeline: the LM head's vocab chunks, for one,
 * compile once instead of once per chunk (each compile of the 32×16 matmul takes lavapipe
 * seconds on a cold shader cache).
 */
function offsetBinding(
  device: Device,
  buffer: DeviceBuffer,
  elements: number,
): { binding: Binding; elements: number } {
  const bytes = elements * 4;
  if (elements === 0 || bytes % device.limits.minStorageBufferOffsetAlignment !== 0) {
    return { binding: buffer, elements };
  }
  return { binding: { buffer, offset: bytes, size: buffer.size - bytes }, elements: 0 };
}

/** The grid constants of matmul.wgsl for this tile and grid. */
function gridConsts(tile: MatmulTile, g: MatmulGrid): Record<string, number> {
  return {
    TM: tile.tm,
    TN: tile.tn,
    WG_M: g.wgM,
    WG_N: g.wgN,
    BLOCKS_M: g.blocksM,
    BLOCKS_N: g.blocksN,
    GRID_X: g.gridX,
  };
}

/**
 * One dispatch of out[m, outColOffset + n] (+)= Σ_k x[m, k] · w[wRowOffset + n, k] (+ bias).
 * Every size is compiled into the kernel, so the pipeline is cached per shape; the offsets are
 * too, unless they fit the binding alignment and move into the bindings
 * ({@link offsetBinding}).
 */
export function matmulStep(device: Device, o: MatmulOptions): Step {
  const where = `matmul ${o.label}`;
  const { m, k, n } = o;
  const wRowOffset = o.wRowOffset ?? 0;
  const biasOffset = o.biasOffset ?? 0;
  const outStride = o.outStride ?? n;
  const outColOffset = o.outColOffset ?? 0;
  checkSizes(where, { m, k, n }, { wRowOffset, biasOffset, outStride, outColOffset });
  const mb = o.members, members = memberConsts(where, mb);
  checkOperands(device, where, { ...o, outStride, outColOffset }, [
    { name: "w", buffer: o.w, elements: (wRowOffset + n) * k, stride: mb?.w ?? 0 },
    ...(o.bias
      ? [{ name: "bias", buffer: o.bias, elements: biasOffset + n, stride: mb?.bias ?? 0 }]
      : []),
  ]);

  const outAt = outBinding(device, o.out, outColOffset);
  const wAt = offsetBinding(device, o.w, wRowOffset * k);
  const tile = o.tile ?? defaultMatmulTile(device, { m, k, n }, o.runs);
  checkTile(where, tile);
  const g = matmulGrid(device, { m, n }, tile);
  const consts = {
    M: m,
    N: n,
    K4: k / 4,
    W_ROW: wAt.elements / k,
    BIAS_OFF: biasOffset,
    OUT_STRIDE: outStride,
    OUT_COL: outAt.col,
    HAS_BIAS: o.bias !== undefined,
    ACCUMULATE: o.accumulate ?? false,
    SWIGLU: false,
    ...members,
    ...gridConsts(tile, g),
  };
  return dispatch(device, {
    label: o.label,
    kernel: "matmul",
    consts,
    // Without a bias the kernel never reads binding 2, but the layout still has it; x stands in
    // (two read-only bindings of one buffer are allowed) so no dummy buffer is needed.
    bindings: [o.x, wAt.binding, o.bias ?? o.x, outAt.binding],
    workgroups: [g.gridX, g.gridY, mb?.count ?? 1],
    wgsl: {
      label: `matmul ${tileKey(tile)} ${m}x${k}x${n}`,
      code: () => wgslConsts(consts) + matmulSource(tile),
    },
  });
}

/** Options of {@link matmulSwigluStep}. Offsets and strides are in f32 elements. */
export interface MatmulSwigluOptions {
  /** What this step computes, e.g. "layer3.mlp". */
  label: string;
  /** (M, K) f32 row-major. */
  x: DeviceBuffer;
  /** Rows of x. */
  m: number;
  /** Inner dimension; must be a multiple of 4. */
  k: number;
  /** Holds rows of the gate projection Wg (I, K) in [out, in] layout. */
  wGate: DeviceBuffer;
  /** First row of Wg inside `wGate` to use. Default 0. */
  gateRowOffset?: number;
  /** Holds rows of the up projection Wu (I, K) in [out, in] layout. May be `wGate`. */
  wUp: DeviceBuffer;
  /** First row of Wu inside `wUp` to use. Default 0. */
  upRowOffset?: number;
  /** Rows of Wg and of Wu used, which is the number of output columns. */
  n: number;
  /** (M, outStride) f32. Must not be the same buffer as x, wGate or wUp. */
  out: DeviceBuffer;
  /** Row stride of out in elements. Default n. */
  outStride?: number;
  /** First column of out written. Default 0. */
  outColOffset?: number;
  /** Block of gate (and of up) accumulators per invocation. Default {@link defaultMatmulSwigluTile}. */
  tile?: MatmulTile;
  /** Expected runs of this pipeline, for the default tile ({@link defaultMatmulTile}). */
  runs?: number;
  /** Several members in one dispatch ({@link MatmulMembers}; gate and up share the w stride). */
  members?: MatmulMembers;
}

/**
 * One dispatch of Qwen3's MLP activation straight from its input:
 * out[m, outColOffset + c] = silu(Σ_k x[m, k] · wGate[gateRowOffset + c, k]) ·
 * (Σ_k x[m, k] · wUp[upRowOffset + c, k]), silu(g) = g / (1 + e^-g) as in kernels/swiglu.wgsl.
 * It replaces two {@link matmulStep}s and a swigluStep, and gate and up never reach memory.
 */
export function matmulSwigluStep(device: Device, o: MatmulSwigluOptions): Step {
  const where = `matmul+swiglu ${o.label}`;
  const { m, k, n } = o;
  const gateRowOffset = o.gateRowOffset ?? 0;
  const upRowOffset = o.upRowOffset ?? 0;
  const outStride = o.outStride ?? n;
  const outColOffset = o.outColOffset ?? 0;
  checkSizes(where, { m, k, n }, { gateRowOffset, upRowOffset, outStride, outColOffset });
  const mb = o.members, members = memberConsts(where, mb);
  checkOperands(device, where, { ...o, outStride, outColOffset }, [
    { name: "wGate", buffer: o.wGate, elements: (gateRowOffset + n) * k, stride: mb?.w ?? 0 },
    { name: "wUp", buffer: o.wUp, elements: (upRowOffset + n) * k, stride: mb?.w ?? 0 },
  ]);

  const outAt = outBinding(device, o.out, outColOffset);
  const tile = o.tile ?? defaultMatmulSwigluTile(device, { m, k, n }, o.runs);
  checkTile(where, tile);
  const g = matmulGrid(device, { m, n }, tile);
  const consts = {
    M: m,
    N: n,
    K4: k / 4,
    W_ROW: gateRowOffset,
    U_ROW: upRowOffset,
    BIAS_OFF: 0,
    OUT_STRIDE: outStride,
    OUT_COL: outAt.col,
    HAS_BIAS: false,
    ACCUMULATE: false,
    SWIGLU: true,
    ...members,
    ...gridConsts(tile, g),
  };
  return dispatch(device, {
    label: o.label,
    kernel: "matmul_swiglu",
    consts,
    // Binding 2 (bias) is in the layout though never read; x stands in, as in matmulStep.
    bindings: [o.x, o.wGate, o.x, outAt.binding, o.wUp],
    workgroups: [g.gridX, g.gridY, mb?.count ?? 1],
    wgsl: {
      label: `matmul+swiglu ${tileKey(tile)} ${m}x${k}x${n}`,
      code: () => wgslConsts(consts) + matmulSource(tile, true),
    },
  });
}

/**
 * out[:, c] = silu(x · Wg[c, :]ᵀ) · (x · Wu[c, :]ᵀ) for gate and up projections [I, K] that may
 * be split into row shards at different rows: one {@link matmulSwigluStep} per piece of the
 * union of both tensors' shard boundaries, writing out columns [start, stop). out is (m, I).
 */
export function swigluLinearSteps(
  device: Device,
  o: {
    label: string;
    x: DeviceBuffer;
    m: number;
    k: number;
    gate: DeviceTensor;
    up: DeviceTensor;
    out: DeviceBuffer;
    tile?: MatmulTile;
    /** Expected runs of each step's pipeline, for the default tile. */
    runs?: number;
    /** Population batching as in {@link linearSteps}; gate and up share the member stride. */
    members?: LinearMembers;
  },
): Step[] {
  const { gate, up } = o;
  for (const t of [gate, up]) {
    if (t.shape.length !== 2 || t.shape[1] !== o.k || t.shape[0] !== gate.shape[0]) {
      throw new Error(
        `swiglu linear ${o.label}: ${t.name} has shape ${JSON.stringify(t.shape)}, needs ` +
          `[${gate.shape[0]}, ${o.k}] (gate and up alike)`,
      );
    }
  }
  const width = gate.shape[0];
  const batched = batchedMembers(o.members, o.m, o.k, width);
  const shardAt = (t: DeviceTensor, row: number) => {
    const s = t.shards.find((s) => s.rowStart <= row && row < s.rowStart + s.rows);
    if (!s) throw new Error(`swiglu linear ${o.label}: ${t.name} has no shard holding row ${row}`);
    return s;
  };
  const steps: Step[] = [];
  // Over the rows gate's shards hold (a view may hold some of them: kernels/tensor.ts
  // readShardPairs), cut where up's shards are cut.
  for (const gs of gate.shards) {
    for (let start = gs.rowStart; start < gs.rowStart + gs.rows;) {
      const us = shardAt(up, start);
      const stop = Math.min(gs.rowStart + gs.rows, us.rowStart + us.rows);
      // Labels name the first column (@c) of each piece when there is more than one.
      const whole = start === 0 && stop === width;
      steps.push(matmulSwigluStep(device, {
        label: o.label + (whole ? "" : `@${start}`),
        x: o.x,
        m: batched.m,
        members: batched.members,
        k: o.k,
        wGate: gs.buffer,
        gateRowOffset: start - gs.rowStart,
        wUp: us.buffer,
        upRowOffset: start - us.rowStart,
        n: stop - start,
        out: o.out,
        outStride: width,
        outColOffset: start,
        tile: o.tile,
        runs: o.runs,
      }));
      start = stop;
    }
  }
  return steps;
}

/**
 * out[:, c] (+)= x · W[c, :]ᵀ (+ bias[c]) for a W [N, K] that may be split into row shards: one
 * step per shard of W, writing out columns [rowStart, rowStart + rows). Where a shard of W spans
 * a shard boundary of the bias, the step is split there too.
 */
export function linearSteps(
  device: Device,
  o: {
    label: string;
    x: DeviceBuffer;
    m: number;
    k: number;
    w: DeviceTensor;
    bias?: DeviceTensor;
    out: DeviceBuffer;
    outStride?: number;
    accumulate?: boolean;
    tile?: MatmulTile;
    /** Expected runs of each step's pipeline, for the default tile. */
    runs?: number;
    /**
     * Population batching: `count` members of m rows each (x and out hold count·m rows), member
     * z's copy of W (and bias) `w` (`bias`) elements after z − 1's; 0 is shared. Default one.
     */
    members?: LinearMembers;
  },
): Step[] {
  const { w, bias } = o;
  if (w.shape.length !== 2 || w.shape[1] !== o.k) {
    throw new Error(
      `linear ${o.label}: weight ${w.name} has shape ${JSON.stringify(w.shape)}, needs [N, ${o.k}]`,
    );
  }
  const nTotal = w.shape[0];
  if (bias && (bias.shape.length !== 1 || bias.shape[0] !== nTotal)) {
    throw new Error(
      `linear ${o.label}: bias ${bias.name} has shape ${
        JSON.stringify(bias.shape)
      }, needs [${nTotal}]`,
    );
  }
  const steps: Step[] = [];
  for (const [si, ws] of w.shards.entries()) {
    let start = ws.rowStart;
    const end = ws.rowStart + ws.rows;
    while (start < end) {
      const bs = bias?.shards.find((b) => b.rowStart <= start && start < b.rowStart + b.rows);
      if (bias && !bs) throw new Error(`linear ${o.label}: bias ${bias.name} misses row ${start}`);
      const stop = bs ? Math.min(end, bs.rowStart + bs.rows) : end;
      // Labels name the shard (#i) and, where the bias cut it, the first column (@c).
      const split = start !== ws.rowStart || stop !== end;
      const label = o.label + (w.shards.length > 1 ? `#${si}` : "") + (split ? `@${start}` : "");
      const outStride = o.outStride ?? nTotal;
      const batched = batchedMembers(o.members, o.m, o.k, outStride);
      steps.push(matmulStep(device, {
        label,
        x: o.x,
        m: batched.m,
        members: batched.members,
        k: o.k,
        w: ws.buffer,
        wRowOffset: start - ws.rowStart,
        n: stop - start,
        bias: bs?.buffer,
        biasOffset: bs ? start - bs.rowStart : undefined,
        out: o.out,
        outStride,
        outColOffset: start,
        accumulate: o.accumulate,
        tile: o.tile,
        runs: o.runs,
      }));
      start = stop;
    }
  }
  return steps;
}

/** Batched members of a linear layer: how many, and each one's stride of W and of its bias. */
export interface LinearMembers {
  count: number;
  w: number;
  bias?: number;
}

/**
 * How a linear over `members` runs: with weights shared by all members, one plain matmul over
 * all count·m rows (the best tiles for the most rows); otherwise member z in grid z.
 */
function batchedMembers(
  mb: LinearMembers | undefined,
  m: number,
  k: number,
  outStride: number,
): { m: number; members?: MatmulMembers } {
  const count = mb?.count ?? 1;
  if (count === 1) return { m };
  if (!mb!.w && !mb!.bias) return { m: count * m };
  return { m, members: { count, x: m * k, w: mb!.w, out: m * outStride, bias: mb!.bias ?? 0 } };
}

/** out = x · wᵀ (+ bias) in float64 on the CPU: x is (m, k), w is (n, k), out is (m, n). */
export function matmulReference(
  x: Float32Array,
  w: Float32Array,
  m: number,
  k: number,
  n: number,
  bias?: Float32Array,
): Float64Array {
  const out = new Float64Array(m * n);
  for (let r = 0; r < m; r++) {
    for (let c = 0; c < n; c++) {
      let s = bias ? bias[c] : 0;
      for (let i = 0; i < k; i++) s += x[r * k + i] * w[c * k + i];
      out[r * n + c] = s;
    }
  }
  return out;
}

/**
 * silu(x · wgᵀ) · (x · wuᵀ) in float64 on the CPU, silu(g) = g / (1 + e^-g): x is (m, k), wg and
 * wu are (n, k), out is (m, n).
 */
export function matmulSwigluReference(
  x: Float32Array,
  wg: Float32Array,
  wu: Float32Array,
  m: number,
  k: number,
  n: number,
): Float64Array {
  const g = matmulReference(x, wg, m, k, n), u = matmulReference(x, wu, m, k, n);
  return g.map((v, i) => v / (1 + Math.exp(-v)) * u[i]);
}

function tileKey(tile: MatmulTile): string {
  return `${tile.tm}x${tile.tn}`;
}
