/**
 * Matmul speed on this adapter: GFLOP/s from GPU timestamps (profileSteps) and from the wall clock
 * over `repeats` dispatches in one submit, for 1024³ and the shapes of a small transformer.
 * `deno task bench` also times through here esflow's matmul on the CPU device
 * ({@link benchMatmul}), the BLAS itself ({@link benchSgemm}) and numpy's sgemm
 * ({@link NUMPY_SGEMM}), so that each of its matmul ratios has both sides from one run.
 *
 *   deno run -A tools/bench_matmul.ts            # the default tile of each shape
 *   deno run -A tools/bench_matmul.ts --all      # every tile in MATMUL_TILES, per shape
 *   deno run -A tools/bench_matmul.ts --repeats 20 --shape 512x1024x2048 --tile 16x16
 *   deno run -A tools/bench_matmul.ts --swiglu  # the MLP's gate·up·SwiGLU: fused against unfused
 *   deno run -A tools/bench_matmul.ts --swiglu --all   # every tile in MATMUL_SWIGLU_TILES
 *   deno run -A tools/bench_matmul.ts --swiglu --rounds 5 --shape 2048x128x384 --tile 16x16
 *
 * A shape is written MxKxN: x is (M, K), w is (N, K), out is (M, N). The first dispatch of a tile
 * compiles it (up to ~10 s for 32x32 on lavapipe, unless Mesa's disk cache has it) and is shown
 * apart as "first ms".
 *
 * With --swiglu a shape MxKxN is the MLP's: x is (M, K), the gate and up projections are (N, K),
 * and the fused matmulSwigluStep is timed against what it replaces, two matmulSteps (each with its
 * default tile) and a swigluStep.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { acquireGpu, type Gpu } from "../kernels/runtime.ts";
import type { Device } from "../kernels/device.ts";
import type { Native } from "../kernels/cpu/native.ts";
import { finish, profileSteps, submitSteps } from "../kernels/program.ts";
import {
  defaultMatmulSwigluTile,
  defaultMatmulTile,
  MATMUL_SWIGLU_TILES,
  MATMUL_TILES,
  matmulStep,
  matmulSwigluStep,
  type MatmulTile,
} from "../kernels/matmul.ts";
import { swigluStep } from "../kernels/swiglu.ts";
import type { Step } from "../kernels/program.ts";

/** One matmul shape: x is (m, k), w is (n, k). */
export interface MatmulShape {
  m: number;
  k: number;
  n: number;
}

/** The speed of one shape with one tile. */
export interface MatmulBenchResult extends MatmulShape {
  /**
   * GFLOP/s, 2·m·k·n per dispatch: from GPU timestamps on WebGPU, from the wall clock of the
   * fastest of three batches on the CPU device (where a run executes at once).
   */
  gflops: number;
  /** GFLOP/s from the wall clock over `repeats` dispatches in one submit, sync included. */
  wallGflops: number;
  /** Milliseconds of one dispatch (GPU time on WebGPU, wall time on the CPU). */
  ms: number;
  /** Wall milliseconds of the first dispatch: compiling the kernel (unless cached) and one run. */
  firstMs: number;
  /** The WGSL tile; null on the CPU device, whose matmul is BLAS calls on fixed tiles. */
  tile: MatmulTile | null;
}

/** 1024³ and the transformer shapes facts.md quotes (M = 2048 tokens). */
export const BENCH_SHAPES: readonly MatmulShape[] = [
  { m: 1024, k: 1024, n: 1024 },
  { m: 2048, k: 128, n: 384 },
  { m: 2048, k: 384, n: 128 },
  { m: 2048, k: 128, n: 128 },
  { m: 2048, k: 128, n: 256 },
];

/** Uniform random values in [-0.5, 0.5): zeros could take faster paths on some hardware. */
function randomF32(length: number): Float32Array {
  return Float32Array.from({ length }, () => Math.random() - 0.5);
}

/**
 * Times each shape as esflow's matmulStep runs it on `device`. On WebGPU: with its default tile,
 * or with each of `tiles` when given; GPU time is the best of three profiled batches of `repeats`
 * dispatches (without timestamp-query the wall clock stands in). On the CPU device: the wall
 * clock of the fastest of three batches of `repeats` steps, each a native call that cuts the
 * matmul into tiles of single-threaded sgemms (kernels/cpu/esflow.c esf_matmul).
 */
export async function benchMatmul(
  device: Device,
  shapes: readonly MatmulShape[],
  options: { repeats?: number; tiles?: readonly MatmulTile[] } = {},
): Promise<MatmulBenchResult[]> {
  const repeats = options.repeats ?? 10;
  const results: MatmulBenchResult[] = [];
  for (const shape of shapes) {
    const { m, k, n } = shape;
    const x = device.createBuffer("bench.x", m * k * 4, "activations");
    const w = device.createBuffer("bench.w", n * k * 4, "activations");
    const out = device.createBuffer("bench.out", m * n * 4, "activations");
    device.write(x, randomF32(m * k));
    device.write(w, randomF32(n * k));
    const flop = 2 * m * k * n;
    if (device.backend !== "webgpu") {
      const step = matmulStep(device, { label: "bench", x, m, k, w, n, out });
      const tFirst = performance.now();
      device.run([step]);
      const firstMs = performance.now() - tFirst;
      const steps = Array(repeats).fill(step);
      // Best of three batches: a 2-core VM shares its cores, and slow outliers are noise.
      let best = Infinity, wallMs = 0;
      for (let i = 0; i < 3; i++) {
        const t0 = performance.now();
        device.run(steps);
        const ms = performance.now() - t0;
        if (i === 0) wallMs = ms;
        best = Math.min(best, ms);
      }
      const ms = best / repeats;
      results.push({
        m,
        k,
        n,
        gflops: flop / ms / 1e6,
        wallGflops: flop * repeats / wallMs / 1e6,
        ms,
        firstMs,
        tile: null,
      });
    } else {
      const gpu = device as Gpu;
      for (const tile of options.tiles ?? [defaultMatmulTile(gpu, shape)]) {
        const step = matmulStep(gpu, { label: "bench", x, m, k, w, n, out, tile });
        // Compile and warm up outside the timing.
        const tFirst = performance.now();
        await gpu.scoped(`bench ${m}x${k}x${n}`, async () => {
          submitSteps(gpu, [step]);
          await gpu.checkPipelines();
          await finish(gpu);
        });
        const firstMs = performance.now() - tFirst;
        const steps = Array(repeats).fill(step);
        const t0 = performance.now();
        submitSteps(gpu, steps);
        await finish(gpu);
        const wallMs = performance.now() - t0;
        // Best of three timed batches: a 2-core VM shares its cores, and slow outliers are noise.
        let gpuMs = Infinity;
        for (let i = 0; i < 3; i++) {
          const prof = await profileSteps(gpu, steps);
          gpuMs = Math.min(gpuMs, prof?.totalMs ?? wallMs);
        }
        const ms = gpuMs / repeats;
        results.push({
          m,
          k,
          n,
          gflops: flop / ms / 1e6,
          wallGflops: flop * repeats / wallMs / 1e6,
          ms,
          firstMs,
          tile,
        });
      }
    }
    for (const b of [x, w, out]) device.destroyBuffer(b);
  }
  return results;
}

/**
 * The BLAS itself on one shape: one cblas_sgemm c = a·bᵀ per call with the BLAS's own threads
 * (kernels/cpu/native.ts sgemmNt at the library's thread count), timed as {@link benchMatmul}
 * times the CPU device: the fastest of three batches of `repeats` calls, after one untimed call.
 * Returns GFLOP/s.
 */
export function benchSgemm(native: Native, shape: MatmulShape, repeats = 10): number {
  const { m, k, n } = shape;
  const a = randomF32(m * k), b = randomF32(n * k), c = new Float32Array(m * n);
  native.sgemmNt({ m, n, k, a, b, c });
  let best = Infinity;
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now();
    for (let r = 0; r < repeats; r++) native.sgemmNt({ m, n, k, a, b, c });
    best = Math.min(best, performance.now() - t0);
  }
  return 2 * m * k * n / (best / repeats) / 1e6;
}

/**
 * numpy's `a @ b.T` in float32 (one sgemm of numpy's BLAS: Debian's python3-numpy uses the
 * libblas.so.3 alternative, OpenBLAS once libopenblas0-pthread is installed), timed the same way
 * as {@link benchSgemm}: the fastest of three batches of `repeats` calls after one untimed call.
 * Prints one JSON line {gflops, numpy}; exits 3 when numpy is not installed.
 */
export const NUMPY_SGEMM = `
import json, sys, time
try:
    import numpy as np
except ImportError:
    sys.exit(3)
m, k, n, repeats = (int(v) for v in sys.argv[1:5])
rng = np.random.default_rng(1)
a = rng.random((m, k), dtype=np.float32) - 0.5
b = rng.random((n, k), dtype=np.float32) - 0.5
c = a @ b.T
best = float("inf")
for _ in range(3):
    t0 = time.perf_counter()
    for _ in range(repeats):
        c = a @ b.T
    best = min(best, time.perf_counter() - t0)
print(json.dumps({"gflops": 2 * m * k * n / (best / repeats) / 1e9, "numpy": np.__version__}))
`;

/** The MLP shapes of the fused SwiGLU benchmark: the tiny model's, and a Qwen3-0.6B-like one. */
export const SWIGLU_BENCH_SHAPES: readonly MatmulShape[] = [
  { m: 2048, k: 128, n: 384 },
  { m: 1024, k: 1024, n: 2816 },
];

/** The fused SwiGLU against the two matmuls and the swiglu pass it replaces, on one shape. */
export interface SwigluBenchResult extends MatmulShape {
  /** GPU milliseconds of one fused dispatch. */
  fusedMs: number;
  /** GPU milliseconds of gate matmul + up matmul + swiglu. */
  unfusedMs: number;
  /** Wall milliseconds of the first fused dispatch (compile included unless cached). */
  firstMs: number;
  /** The fused kernel's tile. */
  tile: MatmulTile;
}

/**
 * Times matmulSwigluStep (its default tile, or each of `tiles`) against gate and up matmulSteps
 * (their default tiles) followed by swigluStep, on random inputs. The variants are profiled in
 * turn, `rounds` times, and each keeps its best batch of `repeats` runs: on a 2-core VM that
 * shares its cores the load changes by 1.5× over a minute, and interleaving keeps the ratio fair.
 * Without timestamp-query the wall clock of a batch stands in.
 */
export async function benchSwiglu(
  gpu: Gpu,
  shapes: readonly MatmulShape[],
  options: { repeats?: number; rounds?: number; tiles?: readonly MatmulTile[] } = {},
): Promise<SwigluBenchResult[]> {
  const repeats = options.repeats ?? 10;
  const rounds = options.rounds ?? 3;
  const results: SwigluBenchResult[] = [];
  for (const shape of shapes) {
    const { m, k, n } = shape;
    const random = (len: number) => Float32Array.from({ length: len }, () => Math.random() - 0.5);
    const x = gpu.createBuffer("bench.x", m * k * 4, "activations");
    const wg = gpu.createBuffer("bench.wg", n * k * 4, "activations");
    const wu = gpu.createBuffer("bench.wu", n * k * 4, "activations");
    const gate = gpu.createBuffer("bench.gate", m * n * 4, "activations");
    const up = gpu.createBuffer("bench.up", m * n * 4, "activations");
    gpu.write(x, random(m * k));
    gpu.write(wg, random(n * k));
    gpu.write(wu, random(n * k));
    const tiles = options.tiles ?? [defaultMatmulSwigluTile(gpu, shape)];
    const variants: { steps: Step[]; ms: number; firstMs: number }[] = [
      [
        matmulStep(gpu, { label: "bench.gate", x, m, k, w: wg, n, out: gate }),
        matmulStep(gpu, { label: "bench.up", x, m, k, w: wu, n, out: up }),
        swigluStep(gpu, { label: "bench.swiglu", gate, up, rows: m, width: n }),
      ],
      ...tiles.map((tile) => [
        matmulSwigluStep(gpu, {
          label: "bench.fused",
          x,
          m,
          k,
          wGate: wg,
          wUp: wu,
          n,
          out: gate,
          tile,
        }),
      ]),
    ].map((steps) => ({ steps, ms: Infinity, firstMs: 0 }));
    // The first run of each variant compiles it (unless Mesa's disk cache has it): not timed.
    for (const v of variants) {
      const t0 = performance.now();
      await gpu.scoped(`bench swiglu ${m}x${k}x${n}`, async () => {
        submitSteps(gpu, v.steps);
        await gpu.checkPipelines();
        await finish(gpu);
      });
      v.firstMs = performance.now() - t0;
    }
    for (let round = 0; round < rounds; round++) {
      for (const v of variants) {
        const batch = Array.from({ length: repeats }, () => v.steps).flat();
        let ms = (await profileSteps(gpu, batch))?.totalMs;
        if (ms === undefined) {
          const t0 = performance.now();
          submitSteps(gpu, batch);
          await finish(gpu);
          ms = performance.now() - t0;
        }
        v.ms = Math.min(v.ms, ms / repeats);
      }
    }
    const [unfused, ...fused] = variants;
    fused.forEach((v, i) =>
      results.push({
        m,
        k,
        n,
        fusedMs: v.ms,
        unfusedMs: unfused.ms,
        firstMs: v.firstMs,
        tile: tiles[i],
      })
    );
    for (const b of [x, wg, wu, gate, up]) gpu.destroyBuffer(b);
  }
  return results;
}

/** The fused SwiGLU benchmark as a table, with the default tile marked. */
async function printSwiglu(
  gpu: Gpu,
  shapes: readonly MatmulShape[],
  options: { repeats: number; rounds: number; tiles?: readonly MatmulTile[] },
) {
  console.log("   M     K     N  tile   fused ms  unfused ms  fused/unfused  first ms");
  const results = await benchSwiglu(gpu, shapes, options);
  for (const r of results) {
    const def = defaultMatmulSwigluTile(gpu, r);
    const mark = def.tm === r.tile.tm && def.tn === r.tile.tn ? " (default)" : "";
    const ratio = (r.fusedMs / r.unfusedMs).toFixed(2);
    console.log(
      `${String(r.m).padStart(4)}  ${String(r.k).padStart(4)}  ${String(r.n).padStart(4)}  ` +
        `${`${r.tile.tm}x${r.tile.tn}`.padEnd(6)}${r.fusedMs.toFixed(2).padStart(9)}` +
        `${r.unfusedMs.toFixed(2).padStart(12)}${ratio.padStart(15)}` +
        `${r.firstMs.toFixed(0).padStart(10)}${mark}`,
    );
  }
}

/** The matmul benchmark as a table, with the default tile marked. */
async function printMatmul(
  gpu: Gpu,
  shapes: readonly MatmulShape[],
  options: { repeats: number; tiles?: readonly MatmulTile[] },
) {
  console.log("   M     K     N  tile    GPU ms  GFLOP/s  wall GFLOP/s  first ms");
  const results = await benchMatmul(gpu, shapes, options);
  for (const r of results) {
    const def = defaultMatmulTile(gpu, r);
    const tile = r.tile ?? def;
    const mark = def.tm === tile.tm && def.tn === tile.tn ? " (default)" : "";
    console.log(
      `${String(r.m).padStart(4)}  ${String(r.k).padStart(4)}  ${String(r.n).padStart(4)}  ` +
        `${`${tile.tm}x${tile.tn}`.padEnd(6)}${r.ms.toFixed(2).padStart(8)}` +
        `${r.gflops.toFixed(1).padStart(9)}${r.wallGflops.toFixed(1).padStart(14)}` +
        `${r.firstMs.toFixed(0).padStart(10)}${mark}`,
    );
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      all: { type: "boolean", default: false },
      swiglu: { type: "boolean", default: false },
      tile: { type: "string", multiple: true },
      repeats: { type: "string", default: "10" },
      rounds: { type: "string", default: "3" },
      shape: { type: "string", multiple: true },
    },
  });
  const shapes = values.shape?.map((s) => {
    const [m, k, n] = s.split("x").map(Number);
    if (![m, k, n].every((v) => Number.isInteger(v) && v > 0)) {
      throw new Error(`--shape ${s}: want MxKxN, e.g. 2048x128x384`);
    }
    return { m, k, n };
  });
  const tiles = values.tile?.map((t) => {
    const [tm, tn] = t.split("x").map(Number);
    return { tm, tn };
  });
  const gpu = await acquireGpu();
  console.log(`adapter: ${gpu.adapterName}; timestamp-query: ${gpu.features.timestampQuery}`);
  const repeats = Number(values.repeats), rounds = Number(values.rounds);
  if (values.swiglu) {
    await printSwiglu(gpu, shapes ?? SWIGLU_BENCH_SHAPES, {
      repeats,
      rounds,
      tiles: values.all ? MATMUL_SWIGLU_TILES : tiles,
    });
  } else {
    await printMatmul(gpu, shapes ?? BENCH_SHAPES, {
      repeats,
      tiles: values.all ? MATMUL_TILES : tiles,
    });
  }
  gpu.destroy();
}
