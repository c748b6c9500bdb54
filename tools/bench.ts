/**
 * `deno task bench`: esflow's speed on this machine, with the other side of every ratio it prints
 * measured in the same run (no figure from another machine).
 *
 *   deno task bench [--backend auto|webgpu|cpu] [--quick] [--json] [--tune] [--no-peer]
 *                   [--threads N]
 *
 * What one run measures, on the backend chosen as train chooses it (kernels/backend.ts):
 * - matmul: the BLAS's own cblas_sgemm at 1024³ with its own threads (`blas_gflops`, and at one
 *   thread), numpy's sgemm at 1024³ in a /usr/bin/python3 subprocess (`numpy_gflops`), and
 *   esflow's matmul at 1024³ and at the tiny preset's projection shapes on the backend (on the
 *   CPU the device's matmul steps, wall clock; on WebGPU GPU timestamps).
 * - forward + fitness tokens/s of the tiny preset, batch 32 × 64 tokens.
 * - ES population-tokens/s of the issue's configuration, tiny preset, N=30, M=32, T=64, over
 *   whole iterations (perturb, forward, fitness, readback, update): full rank with chunks, with
 *   a whole copy per member, with bf16 θ; low rank 4 (EGGROLL) at several member batches, up to
 *   one that puts every member's rows into one GEMM; and plain inference of the same batch.
 * - on the CPU backend, ES at 1 thread and at every core.
 * - generation (tools/bench_generate.ts, JSON key `generation`): tokens/s with the KV cache, and
 *   one reward-fitness iteration's seconds against one log-likelihood iteration's.
 * - the PyTorch peer (tools/torch_es.py, /usr/bin/python3 with Debian's python3-torch), full rank
 *   and low rank 4, the same N, M, T; skipped with a note when absent, or with --no-peer.
 *
 * Then the ratios and the targets of issue 11 item 7, each from two measurements of this run
 * (the embedded default's first-iteration and 100-iteration times are targets of a train run,
 * `deno task train`, not of this bench). Each ES variant's first iteration is untimed, and its
 * inference rounds alternate with its ES iterations; numpy and the BLAS are timed as esflow's
 * matmul is, the fastest of three batches.
 *
 * --quick (under 3 minutes on 2 cores): one timed iteration per variant, low rank at member
 * batches 1 and N only (WebGPU: 1, to compile fewer kernels on lavapipe), no copy or bf16
 * variant, three matmul shapes on WebGPU.
 * With --json the last line of stdout is one JSON object with every number (null where a
 * measurement was skipped or failed; `notes` says why) and the tables go to stderr.
 * --threads N runs the CPU backend, the BLAS, numpy and the peer on N threads (default
 * ESFLOW_THREADS, else every core). --tune times every WGSL tile (WebGPU only).
 *
 * @module
 */
import { intFlag, parseFlags, runMain } from "./cli.ts";
import { benchMatmul, benchSgemm, type MatmulShape, NUMPY_SGEMM } from "./bench_matmul.ts";
import { MATMUL_TILES } from "../kernels/matmul.ts";
import { shapeKey, type TileChoice, writeTileCache } from "../kernels/tile_cache.ts";
import type { Gpu } from "../kernels/runtime.ts";
import { type Backend, type Device, DeviceError } from "../kernels/device.ts";
import { acquireDevice, parseBackend, resolveBackend } from "../kernels/backend.ts";
import type { CpuDevice } from "../kernels/cpu/device.ts";
import { loadNative, type Native } from "../kernels/cpu/native.ts";
import { cpuThreads } from "../kernels/cpu/limits.ts";
import { profileSteps } from "../kernels/program.ts";
import { getPreset } from "../model/presets.ts";
import { randomInit } from "../model/weights.ts";
import { uploadWeights } from "../model/device_weights.ts";
import { Qwen3Forward, type TokenBatch } from "../model/forward.ts";
import { destroyTensor, tensorBytes } from "../kernels/tensor.ts";
import { EsEngine } from "../pipeline/engine.ts";
import { packBatches } from "../pipeline/data.ts";
import { memberRecords } from "../pipeline/es.ts";
import { UserError } from "../pipeline/errors.ts";
import { benchGeneration, printGeneration } from "./bench_generate.ts";

const USAGE = "deno task bench [--backend auto|webgpu|cpu] [--quick] [--json] [--tune] " +
  "[--no-peer] [--threads N]";

/** The interpreter of the subprocesses: Debian's, where python3-numpy and python3-torch live. */
const PYTHON = "/usr/bin/python3";

/**
 * The environment as this process got it, before the native backend set its thread-pool
 * settings (kernels/cpu/native.ts SPIN_SETTINGS, among them OPENBLAS_NUM_THREADS=1): numpy and
 * the peer run under their own defaults, not under ours.
 */
const HOST_ENV = Deno.env.toObject();

/** The issue's ES configuration: tiny preset, N=30, M=32, T=64. */
const ES_CONFIG = { preset: "tiny", population: 30, samples: 32, seqLen: 64 } as const;

/** Forward + fitness throughput of a preset on a random batch. */
export async function benchForward(
  gpu: Device,
  o: { preset: string; batch: number; seqLen: number; repeats: number },
): Promise<
  { tokens_per_s: number; ms_per_batch: number; kernels_ms: Record<string, number> | null }
> {
  const config = getPreset(o.preset);
  const weights = await uploadWeights(gpu, randomInit(config, { seed: 1 }));
  const fwd = new Qwen3Forward(gpu, config, weights, { maxBatch: o.batch, maxSeqLen: o.seqLen });
  let s = 12345;
  const rand = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) % config.vocabSize;
  const batch: TokenBatch = {
    inputIds: Array.from({ length: o.batch }, () => Array.from({ length: o.seqLen }, rand)),
    attentionMask: Array.from({ length: o.batch }, () => new Array(o.seqLen).fill(1)),
  };
  await fwd.score(batch); // compiles every pipeline
  const t0 = performance.now();
  let tokens = 0;
  for (let i = 0; i < o.repeats; i++) tokens += (await fwd.score(batch)).tokens;
  const ms = (performance.now() - t0) / o.repeats;
  const prof = gpu.backend === "webgpu"
    ? await profileSteps(gpu as Gpu, fwd.steps(o.batch, o.seqLen))
    : null;
  fwd.destroy();
  for (const t of weights.values()) destroyTensor(gpu, t);
  return {
    tokens_per_s: tokens / ((ms * o.repeats) / 1000),
    ms_per_batch: ms,
    kernels_ms: prof ? roundAll(prof.byKernel) : null,
  };
}

/** One ES measurement of {@link benchEs}. */
export interface EsBench {
  es_tokens_per_s: number;
  /** Unperturbed forwards of the same batch; null when not asked for. */
  inference_tokens_per_s: number | null;
  es_seconds_per_iteration: number;
  weight_bytes: number;
  peak_device_bytes: number;
  workspace_bytes: number;
  /** The member batch the engine ran (it may clamp the one asked for). */
  member_batch: number;
}

/**
 * ES throughput over whole iterations (perturb, forward, fitness, readback, update) against the
 * unperturbed forward on the same batch: the issue's tiny configuration is N=30, M=32, T=64.
 */
export async function benchEs(
  gpu: Device,
  o: {
    preset: string;
    population: number;
    samples: number;
    seqLen: number;
    iterations: number;
    /** Low-rank (EGGROLL) perturbations of this rank instead of full rank. */
    lowRank?: number;
    /** Full-rank members' scratch (pipeline/engine.ts); default chunks. */
    scratch?: "chunks" | "copy";
    /** θ's storage; default f32. */
    storage?: "f32" | "bf16";
    /** Members evaluated at once (population batching); default 1. */
    memberBatch?: number;
    /** Also time N unperturbed forwards of the same batch; default true. */
    inference?: boolean;
  },
): Promise<EsBench> {
  const config = getPreset(o.preset);
  // The peak of this measurement alone, over what earlier benchmarks left alive.
  const before = gpu.memory.live;
  gpu.resetPeak();
  let s = 777;
  const rand = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) % config.vocabSize;
  const batch: TokenBatch = {
    inputIds: Array.from({ length: o.samples }, () => Array.from({ length: o.seqLen }, rand)),
    attentionMask: Array.from({ length: o.samples }, () => new Array(o.seqLen).fill(1)),
  };
  const packed = packBatches([batch]);
  const scored = packed.layout[0].scored;
  const engine = await EsEngine.create(gpu, {
    config,
    tensors: randomInit(config, { seed: 1 }),
    seed: 1,
    population: o.population,
    antithetic: false,
    maxSamples: o.samples,
    microBatch: o.samples,
    maxLen: o.seqLen,
    fitness: {
      steps: (fwd, x) => fwd.fitnessSteps(x.batch, x.seqLen, x.weights, x.members),
      members: true,
    },
    multipliers: () => ({ sigma: 1, alpha: 1 }),
    lowRank: o.lowRank ? { rank: o.lowRank } : undefined,
    scratch: o.scratch,
    storage: o.storage,
    memberBatch: o.memberBatch,
  });
  try {
    const weightBytes = [...engine.theta.values()].reduce((a, t) => a + tensorBytes(t), 0);
    const iterate = async (t: number) => {
      const r = await engine.evaluate(packed, {
        iteration: t,
        population: memberRecords(engine.options.population, engine.options.antithetic, 1e-3),
        heldOut: false,
      });
      engine.update({ iteration: t, coefficients: r.fitness.map(() => 1e-6) });
    };
    // Inference at its best: N unperturbed forwards of the same batch in one submit, one
    // readback, so both sides pay the same one synchronisation per N forwards. Its rounds
    // alternate with the ES iterations, so that a change in the machine's load (a shared 2-core
    // VM's swings by 2× within a minute) falls on both sides of ES / inference alike.
    const fwd = engine.forward;
    const steps = o.inference ?? true ? fwd.steps(o.samples, o.seqLen) : null;
    const forwards = async (repeat: number) => {
      fwd.upload(batch); // the ES iterations copy their own tokens into the forward's inputs
      const t = performance.now();
      gpu.run([{ op: "block", what: "forward", repeat, body: steps! }]);
      await gpu.readF32(fwd.buffer("r"), 1);
      return performance.now() - t;
    };
    await iterate(0); // compiles every pipeline (binds every dispatch on the CPU)
    if (steps) await forwards(1); // compiles (binds) the forward's own steps
    let esMs = 0, inferMs = 0;
    for (let t = 1; t <= o.iterations; t++) {
      const t0 = performance.now();
      await iterate(t);
      await gpu.finish();
      esMs += performance.now() - t0;
      if (steps) inferMs += await forwards(o.population);
    }
    const esSeconds = esMs / 1000 / o.iterations;
    const inference = steps ? scored / (inferMs / 1000 / (o.iterations * o.population)) : null;
    return {
      es_tokens_per_s: (o.population * scored) / esSeconds,
      inference_tokens_per_s: inference,
      es_seconds_per_iteration: esSeconds,
      weight_bytes: weightBytes,
      peak_device_bytes: gpu.memory.peak - before,
      workspace_bytes: engine.forward.workspaceBytes,
      member_batch: engine.memberBatch,
    };
  } finally {
    engine.destroy();
  }
}

/** The tiny preset's matmul shapes at micro-batches of 16 and 32 × 64 tokens, and 1024³. */
export function tuneShapes(): { m: number; k: number; n: number }[] {
  const c = getPreset("tiny");
  const shapes = [{ m: 1024, k: 1024, n: 1024 }];
  for (const m of [1024, 2048]) {
    const q = c.numHeads * c.headDim, kv = c.numKvHeads * c.headDim;
    for (
      const [k, n] of [
        [c.hiddenSize, q],
        [c.hiddenSize, kv],
        [q, c.hiddenSize],
        [c.hiddenSize, c.intermediateSize],
        [c.intermediateSize, c.hiddenSize],
        [c.hiddenSize, c.vocabSize],
      ]
    ) {
      if (!shapes.some((s) => s.m === m && s.k === k && s.n === n)) shapes.push({ m, k, n });
    }
  }
  return shapes;
}

/**
 * Autotunes: times every candidate tile on each shape and caches the fastest for this adapter
 * (kernels/tile_cache.ts), where the matmul's default selection finds it.
 */
async function tune(gpu: Gpu, command: string): Promise<void> {
  console.log(`backend webgpu on ${gpu.adapterName}\ncommand: ${command}`);
  const tuned: Record<string, TileChoice> = {};
  console.log("| M | K | N | best tile | GFLOP/s | runner-up |\n|---|---|---|---|---|---|");
  for (const shape of tuneShapes()) {
    // 32×32 takes ~9 s to compile on lavapipe: only big matmuls try it.
    const tiles = MATMUL_TILES.filter((t) =>
      t.tm * t.tn < 1024 || 2 * shape.m * shape.k * shape.n >= 2 ** 31
    );
    const results = (await benchMatmul(gpu, [shape], { repeats: 5, tiles })).sort((a, b) =>
      b.gflops - a.gflops
    );
    const [best, second] = results;
    const tile = best.tile!, next = second?.tile;
    tuned[shapeKey(shape)] = { tm: tile.tm, tn: tile.tn, gflops: best.gflops };
    console.log(
      `| ${shape.m} | ${shape.k} | ${shape.n} | ${tile.tm}×${tile.tn} | ${
        best.gflops.toFixed(1)
      } | ${next ? `${next.tm}×${next.tn} ${second.gflops.toFixed(1)}` : "-"} |`,
    );
  }
  console.log(`cached in ${await writeTileCache(gpu.adapterName, tuned)}`);
}

function roundAll(r: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(r).map(([k, v]) => [k, Math.round(v * 100) / 100]));
}

/** a / b, or null when either side was not measured. */
export function ratio(a: number | null | undefined, b: number | null | undefined): number | null {
  return a == null || b == null ? null : a / b;
}

/** What a subprocess gave: its last stdout line as JSON, or why there is none. */
type PythonResult =
  | { json: Record<string, unknown> }
  /** `absent`: the interpreter or its module is not installed (the next call would skip too). */
  | { note: string; absent: boolean };

/**
 * Runs /usr/bin/python3 with `args` under the host environment plus `env`, and parses the last
 * line of its stdout as JSON. Exit code 3 means the script's module is missing (`missing` says
 * which package); any failure is a note, never a number.
 */
async function python(
  args: string[],
  o: { env?: Record<string, string>; missing: string; what: string },
): Promise<PythonResult> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(PYTHON, {
      args,
      clearEnv: true,
      env: { ...HOST_ENV, ...o.env },
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    return { note: `${o.what}: skipped, no ${PYTHON}`, absent: true };
  }
  if (out.code === 3) return { note: `${o.what}: skipped, ${o.missing}`, absent: true };
  const stdout = new TextDecoder().decode(out.stdout).trim();
  if (!out.success) {
    const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-1)[0];
    return { note: `${o.what}: failed (exit ${out.code}): ${err}`, absent: false };
  }
  try {
    return { json: JSON.parse(stdout.split("\n").slice(-1)[0]) };
  } catch {
    return { note: `${o.what}: no JSON line in its output`, absent: false };
  }
}

/** A number field of a subprocess's JSON, or null. */
function num(r: PythonResult, key: string): number | null {
  if (!("json" in r)) return null;
  const v = r.json[key];
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}

/** A string field of a subprocess's JSON, or null. */
function str(r: PythonResult, key: string): string | null {
  return "json" in r && typeof r.json[key] === "string" ? r.json[key] as string : null;
}

/** A row of the targets table (issue 11 item 7). */
export interface Target {
  measure: string;
  /** The measured ratio; null when a side was not measured. */
  ratio: number | null;
  /** The target: ratio ≥ this. */
  target: number;
  /** Whether it is met; null when not measured. */
  met: boolean | null;
}

/**
 * Everything one run measured: the `--json` object, and what the tables print. Throughputs are
 * per second; every number is from this run, and null where it was not measured (`notes` says
 * why).
 */
export interface BenchReport {
  backend: Backend;
  /** The CPU model, threads and BLAS, or the adapter. */
  device: string;
  /** Why this backend (kernels/backend.ts resolveBackend). */
  backend_reason: string;
  /** The same as `device` (the key earlier versions printed). */
  adapter: string;
  command: string;
  quick: boolean;
  /** The native library's line: BLAS, its path, threads, SIMD; null when it did not load. */
  native: string | null;
  /** Threads of the CPU backend, the BLAS, numpy and the peer in this run. */
  threads: number;
  /** The machine's cores (navigator.hardwareConcurrency). */
  all_threads: number;
  /** cblas_sgemm at 1024³ with the BLAS's own `threads` threads, and at one. */
  blas_gflops: number | null;
  blas_1_thread_gflops: number | null;
  /** numpy's float32 a @ b.T at 1024³ (a /usr/bin/python3 subprocess, `threads` threads). */
  numpy_gflops: number | null;
  numpy_version: string | null;
  /**
   * esflow's matmul on the backend; blas_gflops: cblas_sgemm on the shape (CPU backend); tile:
   * the WGSL tile, e.g. "16x8" (null on the CPU).
   */
  matmul: {
    m: number;
    k: number;
    n: number;
    gflops: number;
    blas_gflops: number | null;
    tile: string | null;
  }[];
  /** matmul[0], the 1024³ one. */
  matmul_1024_gflops: number;
  /** Forward + fitness of the tiny preset, 32 × 64 tokens. */
  forward_tokens_per_s: number;
  forward_ms_per_batch: number;
  /** GPU milliseconds per kernel of that forward (WebGPU with timestamps), else null. */
  kernels_ms: Record<string, number> | null;
  population: number;
  samples: number;
  seq_len: number;
  /** Full rank, chunks: ES population-tokens/s, inference of the same batch, memory. */
  es_tokens_per_s: number | null;
  inference_tokens_per_s: number | null;
  es_seconds_per_iteration: number | null;
  weight_bytes: number | null;
  peak_device_bytes: number | null;
  workspace_bytes: number | null;
  /** Full rank, a whole perturbed copy per member (not in a quick run). */
  copy_es_tokens_per_s: number | null;
  copy_peak_device_bytes: number | null;
  copy_workspace_bytes: number | null;
  /** Full rank, θ in bf16 (not in a quick run). */
  bf16_es_tokens_per_s: number | null;
  bf16_weight_bytes: number | null;
  bf16_peak_device_bytes: number | null;
  bf16_workspace_bytes: number | null;
  /** Low rank 4, member batch 1. */
  lowrank_es_tokens_per_s: number | null;
  lowrank_peak_device_bytes: number | null;
  lowrank_workspace_bytes: number | null;
  /** Low rank 4 at each member batch measured ("1", …, "30"). */
  lowrank_member_batches: Record<string, number | null>;
  /** Low rank 4 with every member's rows in one GEMM (member batch N), where measured. */
  lowrank_batched_member_batch: number | null;
  lowrank_batched_es_tokens_per_s: number | null;
  /** The fastest member batch measured, and its throughput. */
  lowrank_best_member_batch: number | null;
  lowrank_best_es_tokens_per_s: number | null;
  /** CPU backend: full rank, chunks at 1 thread and at all_threads (one of them the main run). */
  es_1_thread_tokens_per_s: number | null;
  es_all_threads_tokens_per_s: number | null;
  /** CPU backend, not in a quick run: the best low-rank member batch at 1 thread. */
  lowrank_best_1_thread_tokens_per_s: number | null;
  /** The PyTorch peer (tools/torch_es.py), full rank and --lowrank 4. */
  peer_es_tokens_per_s: number | null;
  peer_lowrank_es_tokens_per_s: number | null;
  peer_threads: number | null;
  peer_openblas_threads: number | null;
  torch_version: string | null;
  /** es_tokens_per_s / inference_tokens_per_s. */
  es_over_inference: number | null;
  /** es_tokens_per_s / peer_es_tokens_per_s. */
  es_over_peer: number | null;
  /** lowrank_best_es_tokens_per_s / peer_es_tokens_per_s (issue 11's low-rank target). */
  lowrank_over_peer: number | null;
  /** lowrank_best_es_tokens_per_s / peer_lowrank_es_tokens_per_s (like for like). */
  lowrank_over_peer_lowrank: number | null;
  /** matmul_1024_gflops / blas_gflops, and / numpy_gflops. */
  matmul_over_blas: number | null;
  matmul_over_numpy: number | null;
  /** es_all_threads_tokens_per_s / es_1_thread_tokens_per_s. */
  threads_speedup: number | null;
  targets: Target[];
  notes: string[];
  bench_seconds: number;
}

/** Options of {@link runBench}. */
export interface BenchOptions {
  quick: boolean;
  /** Threads of the BLAS, numpy and the peer (the CPU device was made with them). */
  threads: number;
  /** Run the PyTorch peer. */
  peer: boolean;
  /** The command line, for the report. */
  command: string;
  /** Why this backend. */
  reason: string;
  /** Where progress lines go (stderr). */
  progress?: (line: string) => void;
}

/** Measures everything of {@link BenchReport} on `device`. */
export async function runBench(device: Device, o: BenchOptions): Promise<BenchReport> {
  const { quick, threads } = o;
  const cpu = device.backend === "cpu" ? device as CpuDevice : null;
  const deviceName = device.name;
  const start = performance.now();
  const progress = (s: string) =>
    (o.progress ?? console.error)(`· ${((performance.now() - start) / 1000).toFixed(0)} s: ${s}`);
  const notes: string[] = [];
  const note = (s: string) => {
    notes.push(s);
    progress(s);
  };

  // The BLAS itself: the CPU device's own library, or (on WebGPU) the same native build.
  let native: Native | null = cpu?.native ?? null;
  if (!native) {
    try {
      native = await loadNative({ threads });
    } catch (e) {
      if (!(e instanceof UserError)) throw e;
      note(`BLAS sgemm: skipped, ${e.message}`);
    }
  }
  const big: MatmulShape = { m: 1024, k: 1024, n: 1024 };
  const sgemmRepeats = quick ? 5 : 20;
  let blasGflops: number | null = null, blas1Gflops: number | null = null;
  if (native) {
    progress(`BLAS sgemm 1024³, ${threads} and 1 thread`);
    blasGflops = benchSgemm(native, big, sgemmRepeats);
    if (threads === 1) blas1Gflops = blasGflops;
    else {
      native.setThreads(1);
      blas1Gflops = benchSgemm(native, big, sgemmRepeats);
      native.setThreads(threads);
    }
  }
  progress(`numpy sgemm 1024³ (${PYTHON}, OPENBLAS_NUM_THREADS=${threads})`);
  let numpy = await python(
    ["-c", NUMPY_SGEMM, String(big.m), String(big.k), String(big.n), String(sgemmRepeats)],
    {
      env: { OPENBLAS_NUM_THREADS: String(threads) },
      missing: "numpy is not installed (apt-get install python3-numpy)",
      what: "numpy sgemm",
    },
  );
  if ("note" in numpy) note(numpy.note);

  const shapes: MatmulShape[] = [
    big,
    // The tiny preset's projections at 16 × 64 tokens: q/o, k/v, gate/up, down, LM head.
    { m: 1024, k: 128, n: 128 },
    { m: 1024, k: 128, n: 64 },
    { m: 1024, k: 128, n: 384 },
    { m: 1024, k: 384, n: 128 },
    { m: 1024, k: 128, n: 256 },
  ];
  // Every shape compiles its own WGSL on lavapipe: a quick run keeps three.
  const matmulShapes = quick && !cpu ? shapes.slice(0, 3) : shapes;
  progress(`esflow matmul, ${matmulShapes.length} shapes`);
  const matmul = await benchMatmul(device, matmulShapes, { repeats: quick ? 3 : 10 });
  // The 1024³ ratio's three sides (esflow, the BLAS, numpy) again in turn, each keeping its
  // best: on a 2-core VM the load moves by 1.5× within a minute, and timing the sides minutes
  // apart made the ratio swing by as much.
  const rounds = quick ? 1 : 2;
  for (let i = 0; i < rounds; i++) {
    progress(`1024³ again: esflow, the BLAS and numpy in turn (round ${i + 2})`);
    const again = (await benchMatmul(device, [big], { repeats: quick ? 3 : 10 }))[0];
    if (again.gflops > matmul[0].gflops) matmul[0] = again;
    if (native && blasGflops !== null) {
      blasGflops = Math.max(blasGflops, benchSgemm(native, big, sgemmRepeats));
    }
    const n2 = await python(
      ["-c", NUMPY_SGEMM, String(big.m), String(big.k), String(big.n), String(sgemmRepeats)],
      {
        env: { OPENBLAS_NUM_THREADS: String(threads) },
        missing: "numpy is not installed (apt-get install python3-numpy)",
        what: "numpy sgemm",
      },
    );
    if (!("note" in n2) && !("note" in numpy) && num(n2, "gflops")! > num(numpy, "gflops")!) {
      numpy = n2;
    }
  }
  // The BLAS on the same shapes, on the CPU: what the device's tiling costs on top of it.
  const matmulBlas = matmulShapes.map((s) =>
    !cpu || !native ? null : s === big ? blasGflops : benchSgemm(native, s, sgemmRepeats)
  );

  progress("forward + fitness, tiny preset, 32 × 64 tokens");
  const fwd = await benchForward(device, {
    preset: "tiny",
    batch: 32,
    seqLen: 64,
    repeats: quick ? 3 : 10,
  });

  // The issue's tiny configuration in each variant; a variant that fails is a note and nulls.
  const N = ES_CONFIG.population;
  type EsOptions = Partial<Parameters<typeof benchEs>[1]>;
  const es = async (what: string, iterations: number, x: EsOptions = {}) => {
    progress(`ES ${what}: ${iterations + 1} iterations (the first untimed)`);
    try {
      return await benchEs(device, { ...ES_CONFIG, iterations, inference: false, ...x });
    } catch (e) {
      if (!(e instanceof UserError || e instanceof DeviceError)) throw e;
      note(`ES ${what}: failed: ${e.message}`);
      return null;
    }
  };
  const full = await es("full rank, chunks", quick ? 1 : 5, { inference: true });
  // The trade-offs of memory for speed (a whole copy per member, bf16 θ) enter no ratio: a
  // quick run leaves them out.
  const copy = quick ? null : await es("full rank, copy", 3, { scratch: "copy" });
  const bf16 = quick ? null : await es("full rank, bf16 θ", 3, { storage: "bf16" });
  // Low rank at member batches from 1 to every member at once: there the population's x·Wᵀ is
  // one GEMM over all N·M·T rows, which is where a CPU's BLAS is fastest.
  const memberBatches = cpu ? (quick ? [1, N] : [1, 5, 10, 15, N]) : (quick ? [1] : [1, 5, N]);
  const lowrank = new Map<number, EsBench | null>();
  for (const P of memberBatches) {
    const r = await es(`low rank 4, member batch ${P}`, quick ? 1 : 3, {
      lowRank: 4,
      memberBatch: P,
    });
    if (r && r.member_batch !== P) note(`low rank 4: member batch ${P} ran as ${r.member_batch}`);
    lowrank.set(P, r);
  }
  let bestBatch: number | null = null, lrBest: EsBench | null = null;
  for (const [P, r] of lowrank) {
    if (r && (!lrBest || r.es_tokens_per_s > lrBest.es_tokens_per_s)) [bestBatch, lrBest] = [P, r];
  }

  // Threads (CPU): ES at 1 thread and at every core, one of them the run above.
  const allThreads = navigator.hardwareConcurrency;
  let es1: number | null = null, esAll: number | null = null, lr1: number | null = null;
  if (cpu && full) {
    const at = async (t: number, what: string, x: EsOptions) => {
      cpu.threads = t;
      try {
        const r = await es(`${what}, ${t} thread${t === 1 ? "" : "s"}`, quick ? 1 : 3, x);
        return r?.es_tokens_per_s ?? null;
      } finally {
        cpu.threads = threads;
      }
    };
    es1 = threads === 1 ? full.es_tokens_per_s : await at(1, "full rank, chunks", {});
    esAll = threads === allThreads
      ? full.es_tokens_per_s
      : await at(allThreads, "full rank, chunks", {});
    if (!quick && lrBest) {
      lr1 = threads === 1 ? lrBest.es_tokens_per_s : await at(
        1,
        `low rank 4, member batch ${bestBatch}`,
        { lowRank: 4, memberBatch: bestBatch! },
      );
    }
  }

  // The PyTorch peer: the same N, M, T, on the same threads.
  let peer: PythonResult = { note: "PyTorch peer: skipped (--no-peer)", absent: true };
  let peerLr: PythonResult = peer;
  if (!o.peer) note(peer.note);
  else {
    const args = [
      new URL("./torch_es.py", import.meta.url).pathname,
      "--json",
      ...["--population", String(N), "--samples", String(ES_CONFIG.samples)],
      ...["--seq-len", String(ES_CONFIG.seqLen), "--threads", String(threads)],
      ...["--iterations", String(quick ? 1 : 3), "--warmup", "1"],
    ];
    const missing = "PyTorch is not installed (apt-get install python3-torch)";
    progress("PyTorch peer, full rank (tools/torch_es.py)");
    peer = await python(args, { missing, what: "PyTorch peer" });
    if ("note" in peer) note(peer.note);
    if (!("note" in peer && peer.absent)) {
      progress("PyTorch peer, low rank 4 (tools/torch_es.py --lowrank 4)");
      peerLr = await python([...args, "--lowrank", "4"], {
        missing,
        what: "PyTorch peer --lowrank 4",
      });
      if ("note" in peerLr) note(peerLr.note);
    }
  }

  // Every ratio from two numbers of this run.
  const tps = (r: EsBench | null | undefined) => r?.es_tokens_per_s ?? null;
  const esTps = tps(full), inferTps = full?.inference_tokens_per_s ?? null;
  const lrBestTps = tps(lrBest);
  const peerTps = num(peer, "es_tokens_per_s"), peerLrTps = num(peerLr, "es_tokens_per_s");
  const numpyGflops = num(numpy, "gflops"), matmulGflops = matmul[0].gflops;
  const ratios = {
    es_over_inference: ratio(esTps, inferTps),
    es_over_peer: ratio(esTps, peerTps),
    lowrank_over_peer: ratio(lrBestTps, peerTps),
    lowrank_over_peer_lowrank: ratio(lrBestTps, peerLrTps),
    matmul_over_blas: ratio(matmulGflops, blasGflops),
    matmul_over_numpy: ratio(matmulGflops, numpyGflops),
    threads_speedup: ratio(esAll, es1),
  };
  const target = (measure: string, r: number | null, t: number): Target => ({
    measure,
    ratio: r,
    target: t,
    met: r === null ? null : r >= t,
  });
  return {
    backend: device.backend,
    device: deviceName,
    backend_reason: o.reason,
    adapter: deviceName,
    command: o.command,
    quick,
    native: native?.info ?? null,
    threads,
    all_threads: allThreads,
    blas_gflops: blasGflops,
    blas_1_thread_gflops: blas1Gflops,
    numpy_gflops: numpyGflops,
    numpy_version: str(numpy, "numpy"),
    matmul: matmul.map(({ m, k, n, gflops, tile }, i) => ({
      m,
      k,
      n,
      gflops,
      blas_gflops: matmulBlas[i],
      tile: tile ? `${tile.tm}x${tile.tn}` : null,
    })),
    matmul_1024_gflops: matmulGflops,
    forward_tokens_per_s: fwd.tokens_per_s,
    forward_ms_per_batch: fwd.ms_per_batch,
    kernels_ms: fwd.kernels_ms,
    population: N,
    samples: ES_CONFIG.samples,
    seq_len: ES_CONFIG.seqLen,
    es_tokens_per_s: esTps,
    inference_tokens_per_s: inferTps,
    es_seconds_per_iteration: full?.es_seconds_per_iteration ?? null,
    weight_bytes: full?.weight_bytes ?? null,
    peak_device_bytes: full?.peak_device_bytes ?? null,
    workspace_bytes: full?.workspace_bytes ?? null,
    copy_es_tokens_per_s: tps(copy),
    copy_peak_device_bytes: copy?.peak_device_bytes ?? null,
    copy_workspace_bytes: copy?.workspace_bytes ?? null,
    bf16_es_tokens_per_s: tps(bf16),
    bf16_weight_bytes: bf16?.weight_bytes ?? null,
    bf16_peak_device_bytes: bf16?.peak_device_bytes ?? null,
    bf16_workspace_bytes: bf16?.workspace_bytes ?? null,
    lowrank_es_tokens_per_s: tps(lowrank.get(1)),
    lowrank_peak_device_bytes: lowrank.get(1)?.peak_device_bytes ?? null,
    lowrank_workspace_bytes: lowrank.get(1)?.workspace_bytes ?? null,
    lowrank_member_batches: Object.fromEntries([...lowrank].map(([P, r]) => [String(P), tps(r)])),
    lowrank_batched_member_batch: lowrank.has(N) ? N : null,
    lowrank_batched_es_tokens_per_s: tps(lowrank.get(N)),
    lowrank_best_member_batch: bestBatch,
    lowrank_best_es_tokens_per_s: lrBestTps,
    es_1_thread_tokens_per_s: es1,
    es_all_threads_tokens_per_s: esAll,
    lowrank_best_1_thread_tokens_per_s: lr1,
    peer_es_tokens_per_s: peerTps,
    peer_lowrank_es_tokens_per_s: peerLrTps,
    peer_threads: num(peer, "threads"),
    peer_openblas_threads: num(peer, "openblas_threads"),
    torch_version: str(peer, "torch"),
    ...ratios,
    targets: [
      target("full-rank ES / the PyTorch ES loop", ratios.es_over_peer, 1.5),
      target("low-rank rank-4 ES / the PyTorch ES loop (full rank)", ratios.lowrank_over_peer, 2),
      target("ES / inference", ratios.es_over_inference, 0.9),
      target("matmul 1024³ / numpy's sgemm", ratios.matmul_over_numpy, 0.9),
    ],
    notes,
    bench_seconds: (performance.now() - start) / 1000,
  };
}

/** Formats a number for a table: integers for throughputs, `digits` decimals else; "—" if null. */
function fmt(v: number | null | undefined, digits = 0): string {
  if (v == null) return "—";
  return digits === 0 ? String(Math.round(v)) : v.toFixed(digits);
}

/** The report as tables, every number from `r`. */
export function printReport(r: BenchReport, log: (line: string) => void): void {
  const plural = (t: number) => `${t} thread${t === 1 ? "" : "s"}`;
  const cpu = r.backend === "cpu";
  log("matmul (x (M,K) · wᵀ, w (N,K)), GFLOP/s");
  log("| M | K | N | esflow | BLAS sgemm | esflow / BLAS | tile |");
  log("|---|---|---|---|---|---|---|");
  for (const s of r.matmul) {
    log(
      `| ${s.m} | ${s.k} | ${s.n} | ${fmt(s.gflops, 1)} | ${fmt(s.blas_gflops, 1)} | ${
        fmt(ratio(s.gflops, s.blas_gflops), 2)
      } | ${s.tile ?? "—"} |`,
    );
  }
  log(
    `BLAS sgemm 1024³ (its own threads): ${fmt(r.blas_gflops, 1)} GFLOP/s at ` +
      `${plural(r.threads)}, ${fmt(r.blas_1_thread_gflops, 1)} at 1; numpy sgemm 1024³: ` +
      `${fmt(r.numpy_gflops, 1)}${r.numpy_version ? ` (numpy ${r.numpy_version})` : ""}`,
  );

  log("\nforward + fitness, tiny preset (hidden 128, 4 layers, vocab 256), batch 32 × 64 tokens");
  log(
    `${fmt(r.forward_tokens_per_s)} scored tokens/s, ${
      fmt(r.forward_ms_per_batch, 1)
    } ms per batch`,
  );
  if (r.kernels_ms) log(`GPU ms per kernel: ${JSON.stringify(r.kernels_ms)}`);

  log(
    `\nES, tiny preset, N=${r.population}, M=${r.samples}, T=${r.seq_len} (whole iterations: ` +
      "perturb, forward, fitness, readback, update)",
  );
  log("| variant | population-tokens/s | (peak − workspace) / θ bytes |");
  log("|---|---|---|");
  // Memory beyond the activation workspace over θ's bytes, each of its own run.
  const beyond = (peak: number | null, workspace: number | null, theta: number | null) =>
    fmt(
      peak === null || workspace === null || theta === null ? null : (peak - workspace) / theta,
      2,
    );
  const row = (what: string, tps: number | null, memory = "") =>
    log(`| ${what} | ${fmt(tps)} | ${memory} |`);
  row(
    "full rank, chunks",
    r.es_tokens_per_s,
    beyond(r.peak_device_bytes, r.workspace_bytes, r.weight_bytes),
  );
  if (!r.quick) {
    row(
      "full rank, a whole perturbed copy per member (scratch: copy)",
      r.copy_es_tokens_per_s,
      beyond(r.copy_peak_device_bytes, r.copy_workspace_bytes, r.weight_bytes),
    );
    row(
      "full rank, bf16 θ (memory over bf16 θ bytes)",
      r.bf16_es_tokens_per_s,
      beyond(r.bf16_peak_device_bytes, r.bf16_workspace_bytes, r.bf16_weight_bytes),
    );
  }
  for (const [P, tps] of Object.entries(r.lowrank_member_batches)) {
    const all = Number(P) === r.population ? ": every member's rows in one GEMM" : "";
    const best = Number(P) === r.lowrank_best_member_batch &&
        Object.keys(r.lowrank_member_batches).length > 1
      ? " (best)"
      : "";
    const memory = P === "1"
      ? beyond(r.lowrank_peak_device_bytes, r.lowrank_workspace_bytes, r.weight_bytes)
      : "";
    row(`low rank 4, member batch ${P}${all}${best}`, tps, memory);
  }
  row("inference, the same batch (N forwards, one readback)", r.inference_tokens_per_s);
  log(
    `peak device bytes / θ bytes (activations dominate at this size): ${
      fmt(ratio(r.peak_device_bytes, r.weight_bytes), 2)
    }; θ ${r.weight_bytes ?? "—"} B`,
  );
  if (cpu) {
    log(
      `\nthreads, ES full rank, chunks: ${fmt(r.es_1_thread_tokens_per_s)} population-tokens/s ` +
        `at 1 thread, ${fmt(r.es_all_threads_tokens_per_s)} at ${r.all_threads}`,
    );
    if (r.lowrank_best_1_thread_tokens_per_s !== null) {
      log(
        `low rank 4, member batch ${r.lowrank_best_member_batch}: ` +
          `${fmt(r.lowrank_best_1_thread_tokens_per_s)} at 1 thread, ` +
          `${fmt(r.lowrank_best_es_tokens_per_s)} at ${r.threads}`,
      );
    }
  }
  log(
    `\nPyTorch peer (tools/torch_es.py, ${PYTHON}): ${fmt(r.peer_es_tokens_per_s)} ` +
      `population-tokens/s full rank, ${fmt(r.peer_lowrank_es_tokens_per_s)} low rank 4` +
      (r.torch_version
        ? `; torch ${r.torch_version}, ${r.peer_threads} threads, OpenBLAS threads ` +
          `${r.peer_openblas_threads}`
        : ""),
  );

  log("\nratios, both sides measured in this run");
  log("| ratio | this side | other side | value |");
  log("|---|---|---|---|");
  const ratioRow = (what: string, a: number | null, b: number | null, q: number | null, d = 0) =>
    log(`| ${what} | ${fmt(a, d)} | ${fmt(b, d)} | ${fmt(q, 2)} |`);
  ratioRow(
    "ES / inference (tokens/s)",
    r.es_tokens_per_s,
    r.inference_tokens_per_s,
    r.es_over_inference,
  );
  ratioRow(
    "ES / PyTorch peer, full rank",
    r.es_tokens_per_s,
    r.peer_es_tokens_per_s,
    r.es_over_peer,
  );
  ratioRow(
    `low-rank ES (member batch ${r.lowrank_best_member_batch ?? "—"}) / PyTorch peer, full rank`,
    r.lowrank_best_es_tokens_per_s,
    r.peer_es_tokens_per_s,
    r.lowrank_over_peer,
  );
  ratioRow(
    "low-rank ES / PyTorch peer, low rank 4",
    r.lowrank_best_es_tokens_per_s,
    r.peer_lowrank_es_tokens_per_s,
    r.lowrank_over_peer_lowrank,
  );
  ratioRow(
    "matmul 1024³ / BLAS sgemm (GFLOP/s)",
    r.matmul_1024_gflops,
    r.blas_gflops,
    r.matmul_over_blas,
    1,
  );
  ratioRow(
    "matmul 1024³ / numpy sgemm (GFLOP/s)",
    r.matmul_1024_gflops,
    r.numpy_gflops,
    r.matmul_over_numpy,
    1,
  );
  if (cpu) {
    ratioRow(
      `ES at ${plural(r.all_threads)} / at 1`,
      r.es_all_threads_tokens_per_s,
      r.es_1_thread_tokens_per_s,
      r.threads_speedup,
    );
  }

  log(`\ntargets (issue 11 item 7), ${r.backend} backend`);
  log("| measure | measured | target | met |");
  log("|---|---|---|---|");
  for (const t of r.targets) {
    const met = t.met === null ? "not measured" : t.met ? "yes" : "no";
    log(`| ${t.measure} | ${fmt(t.ratio, 2)} | ≥ ${t.target} | ${met} |`);
  }
  if (r.notes.length) log(`\nnotes:\n${r.notes.map((n) => `- ${n}`).join("\n")}`);
  log(`\nbench took ${r.bench_seconds.toFixed(0)} s`);
}

if (import.meta.main) {
  await runMain("bench", async () => {
    const { values } = parseFlags(Deno.args, {
      backend: { type: "string" },
      quick: { type: "boolean" },
      json: { type: "boolean" },
      tune: { type: "boolean" },
      "no-peer": { type: "boolean" },
      threads: { type: "string" },
    }, USAGE);
    const command = ["deno task bench", ...Deno.args].join(" ");
    const threads = cpuThreads(
      values.threads === undefined ? undefined : intFlag(values.threads, "threads", 1),
    );
    const resolved = await resolveBackend(
      values.backend === undefined ? undefined : parseBackend(values.backend),
    );
    if (values.tune) {
      if (resolved.backend !== "webgpu") {
        throw new UserError(
          "--tune: nothing to tune on the cpu backend (its matmuls are BLAS calls; the tiles " +
            "are the WGSL kernel's); use --backend webgpu",
        );
      }
      const gpu = await acquireDevice({ backend: "webgpu" });
      await tune(gpu as Gpu, command);
      gpu.destroy();
      return;
    }
    const device = await acquireDevice({ backend: resolved.backend, threads });
    const log = (s: string) => values.json ? console.error(s) : console.log(s);
    log(`backend ${device.backend} on ${device.name}`);
    log(`chosen: ${resolved.reason}`);
    log(`command: ${command}`);
    if (device.backend === "cpu") log(`native: ${(device as CpuDevice).native.info}`);
    log("");
    const report = await runBench(device, {
      quick: values.quick ?? false,
      threads,
      peer: !values["no-peer"],
      command,
      reason: resolved.reason,
    });
    printReport(report, log);
    // Generation with the KV cache, and a reward iteration against a log-likelihood one
    // (tools/bench_generate.ts): a section of its own, under the JSON key `generation`.
    const generation = await benchGeneration(device, { quick: values.quick ?? false });
    printGeneration(generation, log);
    if (values.json) console.log(JSON.stringify({ ...report, generation }));
    device.destroy();
  });
}
