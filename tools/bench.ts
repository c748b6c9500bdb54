/**
 * `deno task bench`: what esflow's kernels and forward do on this machine's adapter.
 *
 *   deno task bench [--quick] [--json]
 *
 * Prints matmul GFLOP/s at several shapes and the forward + fitness throughput (scored tokens
 * per second) of the tiny preset, with the adapter's name and the per-kernel GPU time.
 * With --json the last line of stdout is one JSON object with the same numbers.
 *
 * @module
 */
import { parseFlags, runMain } from "./cli.ts";
import { benchMatmul } from "./bench_matmul.ts";
import { MATMUL_TILES } from "../kernels/matmul.ts";
import { shapeKey, type TileChoice, writeTileCache } from "../kernels/tile_cache.ts";
import type { Gpu } from "../kernels/runtime.ts";
import type { Device } from "../kernels/device.ts";
import { acquireDevice } from "../kernels/backend.ts";
import { profileSteps } from "../kernels/program.ts";
import { getPreset } from "../model/presets.ts";
import { randomInit } from "../model/weights.ts";
import { uploadWeights } from "../model/device_weights.ts";
import { Qwen3Forward, type TokenBatch } from "../model/forward.ts";
import { destroyTensor, tensorBytes } from "../kernels/tensor.ts";
import { EsEngine } from "../pipeline/engine.ts";
import { packBatches } from "../pipeline/data.ts";
import { memberRecords } from "../pipeline/es.ts";

/** The PyTorch CPU peer's ES throughput on this configuration (issue 5: 45,000–51,000). */
const PEER_ES_TOKENS_PER_S = 48000;
/** OpenBLAS sgemm at 1024³ on these 2 cores (facts.md: 220–230 GFLOP/s). */
const OPENBLAS_GFLOPS = 230;

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
  },
): Promise<{
  es_tokens_per_s: number;
  inference_tokens_per_s: number;
  es_seconds_per_iteration: number;
  weight_bytes: number;
  peak_device_bytes: number;
  workspace_bytes: number;
}> {
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
  const weightBytes = [...engine.theta.values()].reduce((a, t) => a + tensorBytes(t), 0);
  const iterate = async (t: number) => {
    const r = await engine.evaluate(packed, {
      iteration: t,
      population: memberRecords(engine.options.population, engine.options.antithetic, 1e-3),
      heldOut: false,
    });
    engine.update({ iteration: t, coefficients: r.fitness.map(() => 1e-6) });
  };
  await iterate(0); // compiles every pipeline
  const t0 = performance.now();
  for (let t = 1; t <= o.iterations; t++) await iterate(t);
  await gpu.finish();
  const esSeconds = (performance.now() - t0) / 1000 / o.iterations;
  // Inference at its best: N unperturbed forwards of the same batch in one submit, one readback,
  // so both sides pay the same one synchronisation per N forwards.
  const fwd = engine.forward;
  fwd.upload(batch);
  const steps = fwd.steps(o.samples, o.seqLen);
  const forwards = async () => {
    gpu.run([{ op: "block", what: "forward", repeat: o.population, body: steps }]);
    await gpu.readF32(fwd.buffer("r"), 1);
  };
  await forwards();
  const t1 = performance.now();
  for (let i = 0; i < o.iterations; i++) await forwards();
  const inferSeconds = (performance.now() - t1) / 1000 / (o.iterations * o.population);
  const peak = gpu.memory.peak - before;
  const workspace = engine.forward.workspaceBytes;
  engine.destroy();
  return {
    es_tokens_per_s: (o.population * scored) / esSeconds,
    inference_tokens_per_s: scored / inferSeconds,
    es_seconds_per_iteration: esSeconds,
    weight_bytes: weightBytes,
    peak_device_bytes: peak,
    workspace_bytes: workspace,
  };
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
async function tune(gpu: Gpu): Promise<void> {
  console.log(`adapter: ${gpu.adapterName}\ncommand: deno task bench --tune`);
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
    tuned[shapeKey(shape)] = { tm: best.tile.tm, tn: best.tile.tn, gflops: best.gflops };
    console.log(
      `| ${shape.m} | ${shape.k} | ${shape.n} | ${best.tile.tm}×${best.tile.tn} | ${
        best.gflops.toFixed(1)
      } | ${second ? `${second.tile.tm}×${second.tile.tn} ${second.gflops.toFixed(1)}` : "-"} |`,
    );
  }
  console.log(`cached in ${await writeTileCache(gpu.adapterName, tuned)}`);
}

function roundAll(r: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(r).map(([k, v]) => [k, Math.round(v * 100) / 100]));
}

if (import.meta.main) {
  await runMain("bench", async () => {
    const { values } = parseFlags(Deno.args, {
      quick: { type: "boolean" },
      json: { type: "boolean" },
      tune: { type: "boolean" },
    }, "deno task bench [--quick] [--json] [--tune]");
    const gpu = await acquireDevice();
    if (values.tune) {
      await tune(gpu as Gpu);
      gpu.destroy();
      return;
    }
    const log = (s: string) => values.json ? console.error(s) : console.log(s);
    log(`backend ${gpu.backend} on ${gpu.name}`);
    log(`command: deno task bench${values.quick ? " --quick" : ""}`);
    const shapes = [
      { m: 1024, k: 1024, n: 1024 },
      // The tiny preset's projections at 16 × 64 tokens: q/o, k/v, gate/up, down, LM head.
      { m: 1024, k: 128, n: 128 },
      { m: 1024, k: 128, n: 64 },
      { m: 1024, k: 128, n: 384 },
      { m: 1024, k: 384, n: 128 },
      { m: 1024, k: 128, n: 256 },
    ];
    const matmul = await benchMatmul(gpu as Gpu, values.quick ? shapes.slice(0, 3) : shapes, {
      repeats: values.quick ? 3 : 10,
    });
    log("\nmatmul (x (M,K) · wᵀ, w (N,K))");
    log("| M | K | N | GFLOP/s | tile |");
    log("|---|---|---|---|---|");
    for (const r of matmul) {
      log(`| ${r.m} | ${r.k} | ${r.n} | ${r.gflops.toFixed(1)} | ${r.tile.tm}×${r.tile.tn} |`);
    }

    const fwd = await benchForward(gpu, {
      preset: "tiny",
      batch: 32,
      seqLen: 64,
      repeats: values.quick ? 3 : 10,
    });
    log("\nforward + fitness, tiny preset (hidden 128, 4 layers, vocab 256), batch 32 × 64 tokens");
    log(
      `${Math.round(fwd.tokens_per_s)} scored tokens/s, ${
        fwd.ms_per_batch.toFixed(1)
      } ms per batch`,
    );
    if (fwd.kernels_ms) log(`GPU ms per kernel: ${JSON.stringify(fwd.kernels_ms)}`);

    // The issue's tiny configuration, N=30, M=32, T=64, in each variant.
    const tiny = (iterations: number, o: Partial<Parameters<typeof benchEs>[1]> = {}) =>
      benchEs(gpu, { preset: "tiny", population: 30, samples: 32, seqLen: 64, iterations, ...o });
    const es = await tiny(values.quick ? 2 : 5);
    const lr = await tiny(values.quick ? 2 : 3, { lowRank: 4 });
    // Low rank with 5 members at once: the group shares each x·Wᵀ.
    const lrBatched = values.quick ? null : await tiny(3, { lowRank: 4, memberBatch: 5 });
    const bf16 = await tiny(values.quick ? 1 : 3, { storage: "bf16" });
    // A whole perturbed copy per member instead of chunks: the speed the chunks' memory costs.
    const copy = values.quick ? null : await tiny(3, { scratch: "copy" });
    const ratio = es.es_tokens_per_s / es.inference_tokens_per_s;
    // Memory beyond the activation workspace over θ's bytes, and ES throughput, of one run.
    type EsRun = Awaited<ReturnType<typeof benchEs>>;
    const beyond = (r: EsRun) =>
      ((r.peak_device_bytes - r.workspace_bytes) / r.weight_bytes).toFixed(2);
    const tps = (r: EsRun) => String(Math.round(r.es_tokens_per_s));
    const row = (what: string, value: string, target: string) =>
      log(`| ${what} | ${value} | ${target} |`);
    log(
      "\nES, tiny preset, N=30, M=32, T=64 (whole iterations: perturb, forward, fitness, readback, update)",
    );
    log("| measure | esflow | target |");
    log("|---|---|---|");
    row("ES population-tokens/s", tps(es), "");
    row("inference tokens/s, same batch", String(Math.round(es.inference_tokens_per_s)), "");
    row("ES / inference", ratio.toFixed(2), "≥ 0.9");
    row(
      `ES / PyTorch CPU peer (${PEER_ES_TOKENS_PER_S} pop-tokens/s, the peer's own measurement)`,
      (es.es_tokens_per_s / PEER_ES_TOKENS_PER_S).toFixed(2),
      "≥ 1",
    );
    row(
      `matmul 1024³ / OpenBLAS sgemm (~${OPENBLAS_GFLOPS} GFLOP/s)`,
      (matmul[0].gflops / OPENBLAS_GFLOPS).toFixed(2),
      "0.25",
    );
    row(
      "(peak device bytes − activation workspace) / weight bytes",
      beyond(es),
      "≤ 1.1",
    );
    row(
      "the same, low-rank rank 4 (EGGROLL)",
      beyond(lr),
      "≤ 1.1",
    );
    row("ES population-tokens/s, low-rank rank 4", tps(lr), "");
    if (lrBatched) {
      row(
        "the same, 5 members per dispatch (member_batch: 5)",
        tps(lrBatched),
        "",
      );
    }
    row(
      "the same, bf16 θ (over bf16 weight bytes)",
      beyond(bf16),
      "≤ 1.1",
    );
    row("ES population-tokens/s, bf16 θ", tps(bf16), "");
    if (copy) {
      row(
        "ES population-tokens/s, a whole perturbed copy per member (scratch: copy)",
        tps(copy),
        "",
      );
      row(
        "(peak − workspace) / weight bytes, scratch: copy",
        beyond(copy),
        "",
      );
    }
    row(
      "peak device bytes / weight bytes (activations dominate this size)",
      (es.peak_device_bytes / es.weight_bytes).toFixed(2),
      "",
    );
    log(
      `seconds per ES iteration ${es.es_seconds_per_iteration.toFixed(2)}; ` +
        `weights ${es.weight_bytes} B; peak device ${es.peak_device_bytes} B`,
    );
    if (values.json) {
      console.log(JSON.stringify({
        backend: gpu.backend,
        device: gpu.name,
        adapter: gpu.name,
        command: `deno task bench${values.quick ? " --quick" : ""} --json`,
        matmul: matmul.map(({ m, k, n, gflops }) => ({ m, k, n, gflops })),
        es_tokens_per_s: es.es_tokens_per_s,
        inference_tokens_per_s: es.inference_tokens_per_s,
        es_over_inference: ratio,
        weight_bytes: es.weight_bytes,
        peak_device_bytes: es.peak_device_bytes,
        workspace_bytes: es.workspace_bytes,
        lowrank_es_tokens_per_s: lr.es_tokens_per_s,
        lowrank_peak_device_bytes: lr.peak_device_bytes,
        bf16_es_tokens_per_s: bf16.es_tokens_per_s,
        bf16_weight_bytes: bf16.weight_bytes,
        bf16_peak_device_bytes: bf16.peak_device_bytes,
        copy_es_tokens_per_s: copy?.es_tokens_per_s,
        lowrank_batched_es_tokens_per_s: lrBatched?.es_tokens_per_s,
        copy_peak_device_bytes: copy?.peak_device_bytes,
        forward_ms_per_batch: fwd.ms_per_batch,
        kernels_ms: fwd.kernels_ms,
      }));
    }
    gpu.destroy();
  });
}
