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
import { acquireGpu, type Gpu } from "../kernels/runtime.ts";
import { profileSteps } from "../kernels/program.ts";
import { getPreset } from "../model/presets.ts";
import { randomInit } from "../model/weights.ts";
import { uploadWeights } from "../model/device_weights.ts";
import { Qwen3Forward, type TokenBatch } from "../model/forward.ts";

/** Forward + fitness throughput of a preset on a random batch. */
export async function benchForward(
  gpu: Gpu,
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
  const prof = await profileSteps(gpu, fwd.steps(o.batch, o.seqLen));
  fwd.destroy();
  return {
    tokens_per_s: tokens / ((ms * o.repeats) / 1000),
    ms_per_batch: ms,
    kernels_ms: prof ? roundAll(prof.byKernel) : null,
  };
}

function roundAll(r: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(r).map(([k, v]) => [k, Math.round(v * 100) / 100]));
}

if (import.meta.main) {
  await runMain("bench", async () => {
    const { values } = parseFlags(Deno.args, {
      quick: { type: "boolean" },
      json: { type: "boolean" },
    }, "deno task bench [--quick] [--json]");
    const gpu = await acquireGpu();
    const log = (s: string) => values.json ? console.error(s) : console.log(s);
    log(`adapter: ${gpu.adapterName}`);
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
    const matmul = await benchMatmul(gpu, values.quick ? shapes.slice(0, 3) : shapes, {
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
      batch: 16,
      seqLen: 64,
      repeats: values.quick ? 3 : 10,
    });
    log("\nforward + fitness, tiny preset (hidden 128, 4 layers, vocab 256), batch 16 × 64 tokens");
    log(
      `${Math.round(fwd.tokens_per_s)} scored tokens/s, ${
        fwd.ms_per_batch.toFixed(1)
      } ms per batch`,
    );
    if (fwd.kernels_ms) log(`GPU ms per kernel: ${JSON.stringify(fwd.kernels_ms)}`);
    if (values.json) {
      console.log(JSON.stringify({
        adapter: gpu.adapterName,
        matmul: matmul.map(({ m, k, n, gflops }) => ({ m, k, n, gflops })),
        inference_tokens_per_s: fwd.tokens_per_s,
        forward_ms_per_batch: fwd.ms_per_batch,
        kernels_ms: fwd.kernels_ms,
      }));
    }
    gpu.destroy();
  });
}
