/**
 * The training run: the ES loop over iterations, metrics.jsonl, checkpoints and exact resume.
 *
 * Run state is one plain object ({@link RunState}) saved whole in each checkpoint's state.json.
 * Everything else a resumed run needs — the data subset of iteration t, σ_t and α_t, the noise —
 * is a pure function of (seed, t), so a run stopped after iteration k and resumed reaches the
 * same bytes at iteration K as one that never stopped.
 *
 * @module
 */
import type { Qwen3Config } from "../model/config.ts";
import type { TensorStream } from "../model/safetensors.ts";
import { saveCheckpoint } from "../model/checkpoint.ts";
import { openCheckpointTensors } from "../model/device_weights.ts";
import type { Tokenizer } from "../tokenizers/mod.ts";
import type { Device } from "../kernels/device.ts";
import type { StorageDtype } from "../kernels/tensor.ts";
import { UserError } from "./errors.ts";
import { createStage, type PipelineSpec } from "./spec.ts";
import { specEngineOptions } from "./engine_options.ts";
import {
  heldOutBatches,
  iterationBatches,
  packBatches,
  splitHoldout,
  subsetSamples,
  tokenizeSamples,
} from "./data.ts";
import type { MemberRecord } from "./es.ts";
import { EsEngine, type EsEngineOptions, type IterationResult } from "./engine.ts";
import type { PackedBatches } from "./data.ts";
import { type EsStrategy, type EsTell, strategyFromSpec } from "./strategy.ts";
import { fitnessBatching } from "./stages/fitness.ts";
import type { TokenBatch } from "../model/forward.ts";

/** What a run needs from a resolved pipeline. */
export interface RunInputs {
  spec: PipelineSpec;
  config: Qwen3Config;
  tokenizer: Tokenizer;
  texts: string[];
  model: { tensors: () => TensorStream };
  outDir: string;
}

/**
 * One line of metrics.jsonl. The step's diagnostics come from the strategy's `tell`
 * (pipeline/strategy.ts StepDiagnostics has their formulas); they are absent from lines written
 * before they existed.
 */
export interface MetricsLine {
  iter: number;
  fitness_mean: number;
  fitness_max: number;
  fitness_min: number;
  /** Held-out mean negative log-likelihood per token of θ_t (before iteration t's update). */
  eval_loss?: number;
  sigma: number;
  alpha: number;
  seconds: number;
  /** Population × scored tokens per second over the whole iteration. */
  tokens_per_s: number;
  /** Population standard deviation (1/N) of the raw fitness. */
  fitness_std?: number;
  /** fitness_max − fitness_min. */
  fitness_spread?: number;
  /** sqrt(E‖Δθ‖²) of the update over the noise: expected, not measured. */
  update_norm_expected?: number;
  /** update_norm_expected / ‖θ_t‖, when the engine provides ‖θ_t‖ (not yet). */
  update_ratio_expected?: number;
  /** Antithetic pairs (K ≥ 2): sqrt(Σ odd² / Σ even²) of the pairs' fitness. */
  pair_snr?: number;
}

/** The diagnostics of a step as metrics.jsonl fields. */
function diagnosticsFields(d: EsTell["diagnostics"]): Partial<MetricsLine> {
  return {
    fitness_std: d.fitnessStd,
    fitness_spread: d.fitnessSpread,
    update_norm_expected: d.updateNormExpected,
    ...(d.updateRatioExpected !== undefined
      ? { update_ratio_expected: d.updateRatioExpected }
      : {}),
    ...(d.pairSnr !== undefined ? { pair_snr: d.pairSnr } : {}),
  };
}

/** The run state saved in state.json: enough, with the pipeline, to continue exactly. */
export interface RunState {
  format: "esflow-run-state/1";
  /** Iterations completed: θ in this checkpoint is θ_iteration. */
  iteration: number;
  /** Total iterations the run was asked for when this was written. */
  iterations: number;
  seed: number;
  /** σ and α of the next iteration (pure functions of the iteration; recorded for readers). */
  sigma: number;
  alpha: number;
  /** The data state: the split sizes and the per-iteration subset size, all from the seed. */
  data: { samples: number; train: number; holdout: number; samples_per_iteration: number };
  /** The pipeline that produced it, minus the keys a resume may change. */
  pipeline: Omit<PipelineSpec, "iterations" | "output" | "backend">;
  /** The backend (webgpu, cpu) and device that ran it. */
  backend?: string;
  adapter: string;
}

/** Options of {@link runTraining}. */
export interface RunOptions {
  /** Continue the run in `outDir` from its latest checkpoint. */
  resume?: boolean;
  /**
   * Scores the population of one iteration. Default: every member on this process's engine.
   * A distributed coordinator replaces it to share members out (pipeline/distributed.ts); it
   * must return every member's fitness, in member order.
   */
  evaluator?: (ctx: EvaluateContext) => Promise<IterationResult>;
  /** Called after each iteration's update is queued, with the fitness and per-noise coefficients. */
  onUpdate?: (
    ctx: EvaluateContext & { fitness: number[]; coefficients: Float64Array },
  ) => Promise<void> | void;
  /** Called after each iteration with its metrics line. */
  onIteration?: (line: MetricsLine, o: { total: number }) => void;
  /** Called with each checkpoint directory written. */
  onCheckpoint?: (dir: string, iteration: number) => void;
  /** Stops after the current iteration (with a checkpoint) when it returns true. */
  shouldStop?: () => boolean;
}

/** What an evaluator is asked to score. */
export interface EvaluateContext {
  engine: EsEngine;
  iteration: number;
  /** σ_t, from the strategy's ask. */
  sigma: number;
  /** The population of the iteration, from the strategy's ask. */
  population: MemberRecord[];
  packed: PackedBatches;
  /** Subset indices into the train list (for a worker that rebuilds the batch itself). */
  indices: number[];
  heldOut: boolean;
}

/** The outcome of a run. */
export interface RunSummary {
  outDir: string;
  finalDir: string;
  iterations: number;
  startedAt: number;
  lastLine?: MetricsLine;
  stopped: boolean;
}

/** Rounds a micro-batch's length up to a multiple of 16 (≤ maxLen) so few distinct shapes compile. */
function bucketed(b: TokenBatch, o: { maxLen: number; padId: number }): TokenBatch {
  const T = b.inputIds[0]?.length ?? 0;
  const to = Math.min(o.maxLen, Math.ceil(T / 16) * 16);
  if (to === T) return b;
  const pad = (r: number[], v: number) => [...r, ...new Array(to - r.length).fill(v)];
  return {
    inputIds: b.inputIds.map((r) => pad(r, o.padId)),
    attentionMask: b.attentionMask.map((r) => pad(r, 0)),
  };
}

/**
 * Thrown by an evaluator to stop the run after a checkpoint of θ_t, the weights before the
 * iteration it could not finish (a distributed coordinator that lost Redis or saw a diverged
 * worker). {@link runTraining} writes checkpoints/iter-t and rethrows it with the directory named.
 */
export class RunInterrupted extends UserError {
  override name = "RunInterrupted";
}

/** What every process of a run derives identically from the pipeline (see {@link runSetup}). */
export interface RunSetup {
  /** The ES strategy: σ_t, α_t, the population and the update coefficients. */
  strategy: EsStrategy;
  /** How θ is stored. */
  storage: StorageDtype;
  /** Samples per iteration. */
  M: number;
  tokens: number[][];
  split: ReturnType<typeof splitHoldout>;
  heldOutPacked: PackedBatches;
  /** Scored tokens of each held-out sample. */
  heldOutTokens: number[];
  /** The engine's options, θ from `tensors`. */
  engineOptions(tensors: TensorStream): EsEngineOptions;
  /** Iteration t's subset and its packed micro-batches: a pure function of (seed, t). */
  iterationInputs(t: number): { indices: number[]; packed: PackedBatches };
}

/**
 * The data, stages and engine options of a run. {@link runTraining} and a distributed worker
 * (pipeline/distributed.ts) both build from it, so every process packs the same bytes.
 */
export function runSetup(
  run: Pick<RunInputs, "spec" | "config" | "tokenizer" | "texts">,
): RunSetup {
  const { spec, config, tokenizer } = run;
  const strategy = strategyFromSpec(spec, config);
  const { micro_batch: microBatch, max_len: maxLen } = fitnessBatching(spec.fitness);
  const dataset = createStage(spec, "dataset");

  // Data: tokenized once; the split and every subset are functions of the seed.
  const { tokens } = tokenizeSamples(run.texts, tokenizer, { maxLen });
  const split = splitHoldout(tokens.length, { seed: spec.seed, holdout: dataset.holdout });
  const M = dataset.samplesPerIteration;
  // Resolve checks the split against the corpus (load.ts); tokenizing can still drop samples
  // shorter than 2 tokens, which only the tokens tell.
  if (M > split.train.length) {
    throw new UserError(
      `dataset.samples_per_iteration ${M} exceeds the ${split.train.length} training samples left after the holdout`,
    );
  }
  const padId = tokenizer.padId;
  const heldOut = heldOutBatches(tokens, split.holdout, { microBatch, padId })
    .map((b) => bucketed(b, { maxLen, padId }));
  const maxSamples = Math.max(M, heldOut.reduce((a, b) => a + b.inputIds.length, 0));
  const engineOptions = specEngineOptions(spec, config, maxSamples, { strategy });
  return {
    strategy,
    storage: engineOptions.storage ?? "f32",
    M,
    tokens,
    split,
    heldOutPacked: packBatches(heldOut),
    heldOutTokens: heldOut.flatMap((b) =>
      b.attentionMask.map((m) => m.slice(1).reduce((a, x) => a + x, 0))
    ),
    engineOptions: (tensors) => ({ ...engineOptions, tensors }),
    iterationInputs: (t) => {
      const indices = subsetSamples(split.train, { seed: spec.seed, iteration: t, size: M });
      const batches = iterationBatches(tokens, indices, { microBatch, padId })
        .map((b) => bucketed(b, { maxLen, padId }));
      return { indices, packed: packBatches(batches) };
    },
  };
}

/** The latest checkpoint of a run dir: final/ or checkpoints/iter-N with the most iterations. */
export async function latestCheckpoint(
  outDir: string,
): Promise<{ dir: string; state: RunState } | null> {
  const candidates: string[] = [`${outDir}/final`];
  try {
    for await (const e of Deno.readDir(`${outDir}/checkpoints`)) {
      if (e.isDirectory && /^iter-\d+$/.test(e.name)) {
        candidates.push(`${outDir}/checkpoints/${e.name}`);
      }
    }
  } catch { /* no checkpoints yet */ }
  let best: { dir: string; state: RunState } | null = null;
  for (const dir of candidates) {
    let state: RunState;
    try {
      state = JSON.parse(await Deno.readTextFile(`${dir}/state.json`));
    } catch {
      continue;
    }
    if (!best || state.iteration > best.state.iteration) best = { dir, state };
  }
  return best;
}

function stableJson(v: unknown): string {
  return JSON.stringify(
    v,
    (_k, x) =>
      x && typeof x === "object" && !Array.isArray(x)
        ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => a.localeCompare(b)))
        : x,
  );
}

/** Appends lines to metrics.jsonl (fsynced: a crash loses at most the line being written). */
async function appendMetrics(path: string, line: MetricsLine): Promise<void> {
  const f = await Deno.open(path, { append: true, create: true });
  try {
    await f.write(new TextEncoder().encode(JSON.stringify(line) + "\n"));
    await f.sync();
  } finally {
    f.close();
  }
}

/** Keeps the metrics lines of iterations before `iteration` (a resume rewrites the rest). */
async function truncateMetrics(path: string, iteration: number): Promise<void> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch {
    return;
  }
  // A line cut short by a crash does not parse: it belongs to an iteration that is rerun.
  const kept = text.split("\n").filter((l) => {
    try {
      return l.trim() !== "" && JSON.parse(l).iter < iteration;
    } catch {
      return false;
    }
  });
  const tmp = `${path}.tmp`;
  await Deno.writeTextFile(tmp, kept.map((l) => l + "\n").join(""));
  const f = await Deno.open(tmp, { read: true, write: true });
  await f.sync();
  f.close();
  await Deno.rename(tmp, path);
}

/**
 * Trains: the ES loop of EA4LLM from iteration 0 (or from the latest checkpoint with `resume`)
 * to spec.iterations, writing metrics.jsonl, checkpoints/iter-N every output.checkpoint_every
 * iterations, and final/.
 */
export async function runTraining(
  device: Device,
  run: RunInputs,
  options: RunOptions = {},
): Promise<RunSummary> {
  const { spec, config } = run;
  const outDir = run.outDir.replace(/\/+$/, "");
  const setup = runSetup(run);
  const { strategy, M, tokens, split } = setup;
  const N = strategy.population;
  const heldPacked = setup.heldOutPacked;
  const heldTokens = setup.heldOutTokens;

  // Where to start: fresh, or the latest checkpoint of this run dir.
  let start = 0;
  let tensors: TensorStream = run.model.tensors();
  const pipelineKey = (() => {
    const { iterations: _i, output: _o, backend: _b, ...rest } = spec;
    return rest;
  })();
  if (options.resume) {
    const latest = await latestCheckpoint(outDir);
    if (!latest) {
      throw new UserError(
        `${outDir}: no checkpoint to resume from (no final/ or checkpoints/iter-N/)`,
      );
    }
    if (stableJson(latest.state.pipeline) !== stableJson(pipelineKey)) {
      throw new UserError(
        `${latest.dir}/state.json: this run was made by a different pipeline (or seed); resume it with the same one`,
      );
    }
    start = latest.state.iteration;
    tensors = await openCheckpointTensors(latest.dir);
  } else if (
    await exists(`${outDir}/metrics.jsonl`) || await exists(`${outDir}/checkpoints`) ||
    await exists(`${outDir}/final`)
  ) {
    throw new UserError(
      `${outDir} already holds a run; continue it with --resume or choose another --out`,
    );
  }

  const engine = await EsEngine.create(device, setup.engineOptions(tensors));
  engine.setHeldOut(heldPacked);

  await Deno.mkdir(outDir, { recursive: true });
  const metricsPath = `${outDir}/metrics.jsonl`;
  if (options.resume) await truncateMetrics(metricsPath, start);

  const total = spec.iterations;
  const state = (iteration: number): RunState => ({
    format: "esflow-run-state/1",
    iteration,
    iterations: total,
    seed: spec.seed,
    sigma: strategy.sigma(iteration),
    alpha: strategy.alpha(iteration),
    data: {
      samples: tokens.length,
      train: split.train.length,
      holdout: split.holdout.length,
      samples_per_iteration: M,
    },
    pipeline: pipelineKey,
    backend: device.backend,
    adapter: device.name,
  });
  const save = async (dir: string, iteration: number) => {
    await saveCheckpoint(dir, {
      config,
      tensors: engine.weights(),
      // θ's own width: bf16 values are written exactly, and a resume reads them back as they were.
      dtype: setup.storage === "bf16" ? "BF16" : "F32",
      overwrite: true,
      files: { "state.json": JSON.stringify(state(iteration), null, 2) + "\n" },
    });
    options.onCheckpoint?.(dir, iteration);
  };

  const every = spec.output.checkpoint_every;
  const evalEvery = spec.output.eval_every;
  let lastLine: MetricsLine | undefined;
  let t = start;
  let stopped = false;
  const startedAt = performance.now();
  for (; t < total; t++) {
    const t0 = performance.now();
    const ask = strategy.ask(t);
    const { indices, packed } = setup.iterationInputs(t);
    const wantEval = t % evalEvery === 0 || t === total - 1;
    const ctx: EvaluateContext = {
      engine,
      iteration: t,
      sigma: ask.sigma,
      population: ask.members,
      packed,
      indices,
      heldOut: wantEval,
    };
    let res: IterationResult;
    try {
      res = options.evaluator ? await options.evaluator(ctx) : await engine.evaluate(packed, {
        iteration: t,
        population: ask.members,
        heldOut: wantEval,
      });
    } catch (e) {
      // θ_t is intact (evaluation never changes it): keep it, so --resume continues from here.
      if (!(e instanceof RunInterrupted)) throw e;
      const dir = `${outDir}/checkpoints/iter-${t}`;
      await save(dir, t);
      throw new RunInterrupted(`${e.message}; wrote ${dir}, continue with --resume ${outDir}`);
    }
    // TODO(issue 10): pass thetaNorm (‖θ_t‖) once the engine computes it on the device; then
    // the line gets update_ratio_expected.
    const told = strategy.tell(t, res.fitness);
    const d = told.coefficients;
    engine.update({ iteration: t, coefficients: d });
    await options.onUpdate?.({ ...ctx, fitness: res.fitness, coefficients: d });
    const seconds = (performance.now() - t0) / 1000;
    const scored = packed.layout.reduce((a, l) => a + l.scored, 0);
    const line: MetricsLine = {
      iter: t,
      fitness_mean: res.fitness.reduce((a, b) => a + b, 0) / N,
      fitness_max: Math.max(...res.fitness),
      fitness_min: Math.min(...res.fitness),
      ...(res.heldOut ? { eval_loss: heldOutLoss(res.heldOut, heldTokens) } : {}),
      sigma: told.sigma,
      alpha: told.alpha,
      seconds,
      tokens_per_s: (N * scored) / seconds,
      ...diagnosticsFields(told.diagnostics),
    };
    await appendMetrics(metricsPath, line);
    lastLine = line;
    options.onIteration?.(line, { total });
    const done = t + 1;
    if (every > 0 && done % every === 0 && done < total) {
      await save(`${outDir}/checkpoints/iter-${done}`, done);
    }
    if (options.shouldStop?.() && done < total) {
      await save(`${outDir}/checkpoints/iter-${done}`, done);
      t = done;
      stopped = true;
      break;
    }
  }
  const finalDir = `${outDir}/final`;
  if (!stopped) await save(finalDir, total);
  return { outDir, finalDir, iterations: stopped ? t : total, startedAt, lastLine, stopped };
}

/** Held-out loss: mean negative log-likelihood per scored token, −Σ_b R_b·n_b / Σ_b n_b. */
export function heldOutLoss(r: readonly number[], tokens: readonly number[]): number {
  let s = 0, n = 0;
  r.forEach((rb, b) => {
    s += rb * tokens[b];
    n += tokens[b];
  });
  return -s / n;
}

/** Whether anything exists at `path`. */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}
