/**
 * The generation section of `deno task bench` (tools/bench.ts): generation tokens/s with the KV
 * cache (model/decode.ts), and the cost of one reward-fitness iteration against one
 * log-likelihood iteration of the same model, population and prompts.
 *
 * - generation: the tiny preset, B prompts of P tokens, G new tokens each, greedy with no stop
 *   (every sequence runs G steps): generated tokens per second, prefill included, and the
 *   per-step time of the decode steps alone.
 * - reward against log-likelihood: tiny, N members, M prompts of P tokens. A reward iteration is
 *   what fitness type reward runs (pipeline/reward_run.ts): per member, its whole perturbed copy
 *   (scratch: copy) and greedy generation of G tokens for all M prompts, then the update. A
 *   log-likelihood iteration scores the same M samples at P + G tokens (the prompts and their
 *   completions' length), then the update. Both first run untimed once (compiles, binds).
 *
 * @module
 */
import type { Device } from "../kernels/device.ts";
import { destroyTensor } from "../kernels/tensor.ts";
import { getPreset } from "../model/presets.ts";
import { randomInit } from "../model/weights.ts";
import { uploadWeights } from "../model/device_weights.ts";
import { Qwen3Decoder } from "../model/decode.ts";
import type { TokenBatch } from "../model/forward.ts";
import { EsEngine } from "../pipeline/engine.ts";
import { packBatches } from "../pipeline/data.ts";
import { memberRecords } from "../pipeline/es.ts";

/** What the generation section measured (the `generation` key of bench's JSON). */
export interface GenerationBench {
  preset: string;
  /** B, P, G of the generation measurement. */
  prompts: number;
  prompt_tokens: number;
  new_tokens: number;
  /** Generated tokens per second with the cache, prefill included. */
  tokens_per_s: number;
  /** Milliseconds per decode step (all B sequences), prefill excluded. */
  ms_per_step: number;
  /** The KV cache's bytes for this generation. */
  cache_bytes: number;
  /** N and M of the iteration comparison (P and G as above). */
  population: number;
  samples: number;
  /** Seconds of one reward iteration (generation, reward, update) and of one LL iteration. */
  reward_seconds_per_iteration: number;
  log_likelihood_seconds_per_iteration: number;
  /** reward / log-likelihood seconds per iteration. */
  reward_over_log_likelihood: number;
}

/** Options of {@link benchGeneration}. */
export interface GenerationBenchOptions {
  /** Fewer timed repeats. */
  quick: boolean;
}

function randomIds(n: number, len: number, vocab: number, seed: number): number[][] {
  let s = seed;
  const next = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) % vocab;
  return Array.from({ length: n }, () => Array.from({ length: len }, next));
}

/** Runs the generation section on `device`. */
export async function benchGeneration(
  device: Device,
  o: GenerationBenchOptions,
): Promise<GenerationBench> {
  const preset = "tiny", config = getPreset(preset);
  const B = 16, P = 16, G = 32, N = 16, M = 16;
  const repeats = o.quick ? 1 : 3;

  // Generation with the cache, θ as stored.
  const weights = await uploadWeights(device, randomInit(config, { seed: 1 }));
  const decoder = new Qwen3Decoder(device, config, weights, { maxBatch: B, maxSeqLen: P + G });
  const prompts = randomIds(B, P, config.vocabSize, 5);
  await decoder.generate(prompts, { maxNewTokens: G });
  let best = Infinity, stepMs = Infinity;
  for (let r = 0; r < repeats; r++) {
    const step = await decoder.generate(prompts.map((p) => p.slice(0, 1)), { maxNewTokens: G });
    stepMs = Math.min(stepMs, (step.seconds * 1000) / step.steps);
    const g = await decoder.generate(prompts, { maxNewTokens: G });
    best = Math.min(best, g.seconds);
  }
  const cacheBytes = decoder.cacheBytes;
  decoder.destroy();
  for (const t of weights.values()) destroyTensor(device, t);

  // One reward iteration against one log-likelihood iteration, same model, N, M.
  const engine = await EsEngine.create(device, {
    config,
    tensors: randomInit(config, { seed: 1 }),
    seed: 1,
    population: N,
    antithetic: false,
    maxSamples: M,
    microBatch: M,
    maxLen: P + G,
    fitness: {
      steps: (fwd, x) => fwd.fitnessSteps(x.batch, x.seqLen, x.weights, x.members),
      members: true,
    },
    multipliers: () => ({ sigma: 1, alpha: 1 }),
    scratch: "copy",
  });
  const members = memberRecords(N, false, 1e-3);
  const rewardPrompts = randomIds(M, P, config.vocabSize, 9);
  const gen = new Qwen3Decoder(device, config, engine.thetaWeights, {
    maxBatch: M,
    maxSeqLen: P + G,
    members: engine.memberBatch,
  });
  const text: TokenBatch = {
    inputIds: randomIds(M, P + G, config.vocabSize, 11),
    attentionMask: Array.from({ length: M }, () => new Array(P + G).fill(1)),
  };
  const packed = packBatches([text]);
  const coefficients = new Array(N).fill(1e-6);
  const rewardIteration = async (t: number) => {
    const r = await engine.evaluateWith({ iteration: t, population: members }, async (g) => {
      const out = await gen.generate(rewardPrompts, {
        maxNewTokens: G,
        weights: g.weights,
        members: g.count,
      });
      // A reward of each completion: its length stands in for the reward's (pure, host) cost.
      return Array.from(
        { length: g.count },
        (_, z) =>
          out.sequences.slice(z * M, (z + 1) * M).reduce((a, s) => a + s.newIds.length, 0) / M,
      );
    });
    engine.update({ iteration: t, coefficients: r.fitness.map(() => 1e-6) });
    await device.finish();
  };
  const llIteration = async (t: number) => {
    await engine.evaluate(packed, { iteration: t, population: members, heldOut: false });
    engine.update({ iteration: t, coefficients });
    await device.finish();
  };
  const time = async (f: (t: number) => Promise<void>) => {
    await f(0);
    let s = Infinity;
    for (let t = 1; t <= repeats; t++) {
      const t0 = performance.now();
      await f(t);
      s = Math.min(s, (performance.now() - t0) / 1000);
    }
    return s;
  };
  const ll = await time(llIteration);
  const reward = await time(rewardIteration);
  gen.destroy();
  engine.destroy();
  return {
    preset,
    prompts: B,
    prompt_tokens: P,
    new_tokens: G,
    tokens_per_s: (B * G) / best,
    ms_per_step: stepMs,
    cache_bytes: cacheBytes,
    population: N,
    samples: M,
    reward_seconds_per_iteration: reward,
    log_likelihood_seconds_per_iteration: ll,
    reward_over_log_likelihood: reward / ll,
  };
}

/** The generation section as lines (a table), every number from `g`. */
export function printGeneration(g: GenerationBench, log: (line: string) => void): void {
  log("");
  log(
    `generation (KV cache), ${g.preset}: ${g.prompts} prompts × ${g.prompt_tokens} tokens, ` +
      `${g.new_tokens} new tokens each, greedy`,
  );
  log("");
  log("| measure | value |");
  log("| --- | --- |");
  log(`| generated tokens/s (prefill included) | ${Math.round(g.tokens_per_s)} |`);
  log(`| ms per decode step (${g.prompts} sequences) | ${g.ms_per_step.toFixed(2)} |`);
  log(`| KV cache | ${(g.cache_bytes / 1024).toFixed(0)} KiB |`);
  log(
    `| one reward iteration (N=${g.population}, M=${g.samples}, generate ${g.new_tokens}) | ` +
      `${g.reward_seconds_per_iteration.toFixed(3)} s |`,
  );
  log(
    `| one log-likelihood iteration (same N, M, ${g.prompt_tokens + g.new_tokens} tokens) | ` +
      `${g.log_likelihood_seconds_per_iteration.toFixed(3)} s |`,
  );
  log(`| reward / log-likelihood | ${g.reward_over_log_likelihood.toFixed(2)} |`);
}
