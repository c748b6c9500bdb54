/**
 * The training run: the ES loop over iterations, metrics.jsonl, checkpoints and exact resume.
 *
 * Run state is one plain object ({@link RunState}) saved whole in each checkpoint's state.json.
 * Everything else a resumed run needs — the data subset of iteration t, σ_t and α_t, the noise —
 * is a pure function of (seed, t), so a run stopped after iteration k and resumed reaches the
 * same bytes at iteration K as one that never stopped. The run dir's files, and the checks a
 * resume makes before it continues (the pipeline, the data, θ's checksum, the backend), are in
 * pipeline/run_dir.ts.
 *
 * Reliability, as the loop keeps it: a kill at any moment loses at most one checkpoint interval
 * (checkpoints appear atomically; the next start cleans what a killed write left), and a run
 * whose numbers turn non-finite stops with the last good checkpoint intact and no checkpoint of
 * the bad θ.
 *
 * @module
 */
import type { Qwen3Config } from "../model/config.ts";
import type { TensorStream } from "../model/safetensors.ts";
import { saveCheckpoint } from "../model/checkpoint.ts";
import { finiteTensors, NonFiniteWeights, openCheckpointTensors } from "../model/device_weights.ts";
import { paramCount } from "../model/presets.ts";
import type { Tokenizer } from "../tokenizers/mod.ts";
import type { Device } from "../kernels/device.ts";
import type { StorageDtype } from "../kernels/tensor.ts";
import { WeightsChecksum } from "../kernels/checksum.ts";
import { WeightsNorm } from "../kernels/sum_squares.ts";
import { UserError } from "../errors.ts";
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
import { F32_MAX, F32_MIN_POSITIVE, type KeyPath } from "./load.ts";
import type { Plan } from "./compile.ts";
import { checkRunFits, formatBytes } from "./limits.ts";
import { blockIteration, faultPoint } from "../faults.ts";
import { rewardRun } from "./reward_run.ts";
import {
  appendMetrics,
  checkOutDir,
  type CheckpointRef,
  checkThetaChecksum,
  cleanRunDir,
  dataDigest,
  exists,
  holdsRun,
  isDiskFull,
  latestCheckpoint,
  makeRunDir,
  manifestPipeline,
  type MetricsLine,
  pipelineDigest,
  pipelineKey,
  readManifest,
  type ResumeTarget,
  RUN_MANIFEST_FORMAT,
  RUN_STATE_FORMAT,
  runDirError,
  type RunState,
  sealState,
  truncateMetrics,
  verifyManifest,
  verifyResume,
  writeManifest,
} from "./run_dir.ts";

// The run dir's formats live in run_dir.ts; these names stay importable from here (mod.ts).
export { exists, latestCheckpoint } from "./run_dir.ts";
export type { MetricsLine, RunState } from "./run_dir.ts";

/** What a run needs from a resolved pipeline. */
export interface RunInputs {
  /** The validated pipeline. */
  spec: PipelineSpec;
  /** The model's architecture. */
  config: Qwen3Config;
  /** Text → token ids. */
  tokenizer: Tokenizer;
  /** Every sample of the corpus, held-out ones included. */
  texts: string[];
  /** The initial weights, a fresh stream per call. */
  model: { tensors: () => TensorStream };
  /** Where the run writes (metrics.jsonl, checkpoints/, final/). */
  outDir: string;
  /**
   * The pipeline file's places, for messages, and its path and text, which run.json records so
   * that `--resume DIR` needs no pipeline argument (a ResolvedPipeline has them).
   */
  loaded?: { where(path: KeyPath): string; file?: string; text?: string };
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

/** Options of {@link runTraining}. */
export interface RunOptions {
  /** Continue the run in `outDir` from its latest checkpoint. */
  resume?: boolean;
  /**
   * Scores the population of one iteration. Default: every member on this process's engine.
   * A distributed coordinator replaces it to share members out (pipeline/distributed.ts); it
   * must return every member's fitness, in member order.
   * @internal
   */
  evaluator?: (ctx: EvaluateContext) => Promise<IterationResult>;
  /**
   * Called after each iteration's update is queued, with the fitness and per-noise coefficients.
   * @internal
   */
  onUpdate?: (
    ctx: EvaluateContext & { fitness: number[]; coefficients: Float64Array },
  ) => Promise<void> | void;
  /** Called after each iteration with its metrics line. */
  onIteration?: (line: MetricsLine, o: { total: number }) => void;
  /**
   * Progress within an iteration: `done` of `of` members scored (pipeline/engine.ts
   * MemberProgress). Only the default evaluator reports it; setting it runs each iteration's
   * program in pieces (the same ops, one run per member group).
   */
  onMembers?: (p: { iteration: number; done: number; of: number }) => void;
  /**
   * Called with each checkpoint directory written, and awaited: a distributed coordinator
   * publishes it for workers that join late before the run goes on.
   */
  onCheckpoint?: (dir: string, iteration: number) => Promise<void> | void;
  /** Stops after the current iteration (with a checkpoint) when it returns true. */
  shouldStop?: () => boolean;
  /**
   * Resume on another backend than the run's (`--allow-backend-change`): backends agree to
   * ~1e-5, not bit for bit, so the trajectory changes. Default false: a resume refuses.
   */
  allowBackendChange?: boolean;
  /** One-line notes for the user: leftovers of a killed write cleaned, another device. */
  onNote?: (line: string) => void;
  /**
   * Called once every check has passed, right before the first iteration: from here on the run
   * trains (train prints the status server's address here, so a refusal stays one line).
   */
  onStart?: (o: { iteration: number; total: number }) => void;
  /**
   * The plan {@link checkRunFits} made for this device, when the caller already checked.
   * @internal
   */
  plan?: Plan | null;
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
  /** The run directory. */
  outDir: string;
  /** Its final/ checkpoint. */
  finalDir: string;
  /** Iterations completed. */
  iterations: number;
  /** performance.now() when the run started, in ms. */
  startedAt: number;
  /** The last metrics.jsonl line written. */
  lastLine?: MetricsLine;
  /** Whether it was asked to stop before the last iteration. */
  stopped: boolean;
  /** A resume of a run whose final/ already holds every iteration asked for: nothing ran. */
  alreadyDone?: boolean;
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

/**
 * A run stopped because its numbers left the f32 range: non-finite fitness, or a θ with NaN or
 * ±Inf when it would be checkpointed. Nothing of the bad iteration is written; the message
 * names the iteration, the likely cause and the last good checkpoint.
 */
export class NonFiniteRun extends UserError {
  override name = "NonFiniteRun";
}

/**
 * Trains: the ES loop of EA4LLM from iteration 0 (or from the latest checkpoint with `resume`)
 * to spec.iterations, writing metrics.jsonl, checkpoints/iter-N every output.checkpoint_every
 * iterations, and final/.
 *
 * Before anything is allocated or written: the output dir is checked (not a file, not under a
 * file), the plan is checked against the device ({@link checkRunFits}), and a resume verifies
 * what it continues (pipeline/run_dir.ts verifyResume, then θ's checksum once θ is on the
 * device). A resume with no checkpoint yet (killed before the first one completed) starts over
 * from iteration 0 after checking run.json.
 */
export async function runTraining(
  device: Device,
  run: RunInputs,
  options: RunOptions = {},
): Promise<RunSummary> {
  const { spec, config } = run;
  const outDir = run.outDir.replace(/\/+$/, "");
  const setup = runSetup(run);
  // fitness type reward: the members generate and a reward scores them (pipeline/reward_run.ts).
  const reward = rewardRun(run, setup.split);
  const { strategy, M, tokens, split } = setup;
  const N = strategy.population;
  const heldPacked = setup.heldOutPacked;
  const heldTokens = setup.heldOutTokens;
  const note = options.onNote ?? (() => {});
  const total = spec.iterations;

  await checkOutDir(outDir);
  if (options.plan === undefined) await checkRunFits(device, run);

  // What this process would continue: compared with state.json (or run.json) on resume.
  const key = pipelineKey(spec);
  const data = {
    samples: tokens.length,
    train: split.train.length,
    holdout: split.holdout.length,
    samples_per_iteration: M,
  };
  const target: ResumeTarget = {
    key,
    pipelineDigest: await pipelineDigest(key),
    dataDigest: await dataDigest(tokens),
    data,
    backend: device.backend,
    adapter: device.name,
    iterations: total,
    allowBackendChange: options.allowBackendChange,
    dataWhere: run.loaded
      ? `${run.loaded.where(["dataset", "path"])}: dataset.path ${String(spec.dataset.path)}`
      : undefined,
  };

  // Where to start: fresh, or the latest checkpoint of this run dir.
  let start = 0;
  let tensors: TensorStream = run.model.tensors();
  let from: CheckpointRef | null = null;
  const cleaned = async () => {
    const c = await cleanRunDir(outDir);
    for (const d of c.restored) {
      note(`put back ${d}, which a killed checkpoint write had moved aside`);
    }
    if (c.removed.length > 0) {
      note(`removed ${c.removed.length} leftover(s) of a killed write: ${c.removed.join(", ")}`);
    }
  };
  if (options.resume) {
    if (!(await holdsRun(outDir))) {
      throw new UserError(
        `${outDir}: no checkpoint to resume from (no final/ or checkpoints/iter-N/, no run.json); ` +
          `start it without --resume`,
      );
    }
    await cleaned();
    from = await latestCheckpoint(outDir, { strict: true });
    if (from) {
      const v = await verifyResume(from, target);
      if (v.note) note(v.note);
      start = from.state.iteration;
      tensors = await openCheckpointTensors(from.dir);
    } else {
      // Killed before its first checkpoint completed: nothing to continue but the start.
      const manifest = await readManifest(outDir);
      if (manifest) verifyManifest(outDir, manifest, target);
      note(`${outDir} has no checkpoint yet: starting over from iteration 0`);
    }
  } else if (await holdsRun(outDir)) {
    throw new UserError(
      `${outDir} already holds a run; continue it with --resume or choose another --out`,
    );
  } else {
    await cleaned();
  }

  const engine = await EsEngine.create(device, setup.engineOptions(tensors));
  const checksum = new WeightsChecksum(device, engine.names.map((n) => engine.theta.get(n)!));
  if (from) checkThetaChecksum(from, await checksum.compute());
  // ‖θ_t‖ for the step's diagnostics (update_ratio_expected): one pass over θ, one small read.
  const norm = new WeightsNorm(device, engine.names.map((n) => engine.theta.get(n)!));
  const finalDir = `${outDir}/final`;
  const startedAt = performance.now();
  if (from && start === total && from.dir === finalDir) {
    // Resumed to the length it already has: final/ is the answer; rewrite nothing.
    checksum.destroy();
    norm.destroy();
    engine.destroy();
    return { outDir, finalDir, iterations: total, startedAt, stopped: false, alreadyDone: true };
  }
  engine.setHeldOut(heldPacked);

  const metricsPath = `${outDir}/metrics.jsonl`;
  const writing = async (path: string, fn: () => Promise<void>) => {
    try {
      await fn();
    } catch (e) {
      throw runDirError(e, path) ?? e;
    }
  };
  await makeRunDir(outDir);
  if (!(await exists(`${outDir}/run.json`))) {
    await writing(`${outDir}/run.json`, () =>
      writeManifest(outDir, {
        format: RUN_MANIFEST_FORMAT,
        name: spec.name,
        seed: spec.seed,
        pipeline: key,
        pipeline_digest: target.pipelineDigest,
        data_digest: target.dataDigest,
        backend: device.backend,
        adapter: device.name,
        ...manifestPipeline(run.loaded),
      }));
    faultPoint("run.manifest");
  }
  if (options.resume) await writing(metricsPath, () => truncateMetrics(metricsPath, start));
  options.onStart?.({ iteration: start, total });

  const state = (iteration: number, theta: string): Promise<RunState> =>
    sealState({
      format: RUN_STATE_FORMAT,
      iteration,
      iterations: total,
      seed: spec.seed,
      sigma: strategy.sigma(iteration),
      alpha: strategy.alpha(iteration),
      data: { ...data, digest: target.dataDigest },
      pipeline: key,
      pipeline_digest: target.pipelineDigest,
      theta_checksum: theta,
      backend: device.backend,
      adapter: device.name,
    });
  // What one checkpoint takes on disk: θ in its stored width, and small files.
  const checkpointBytes = paramCount(config) * (setup.storage === "bf16" ? 2 : 4) + (64 << 10);
  let lastGood: string | null = from?.dir ?? null;
  const lastGoodWords = () =>
    lastGood ? `the last good checkpoint ${lastGood} is intact` : "the run has no checkpoint yet";
  const save = async (dir: string, iteration: number) => {
    const theta = await checksum.compute();
    try {
      await saveCheckpoint(dir, {
        config,
        // θ is read back here, tensor by tensor: a NaN or ±Inf stops the write before the
        // checkpoint exists (its temp dir is removed).
        tensors: finiteTensors(engine.weights(), { source: dir }),
        // θ's own width: bf16 values are written exactly, and a resume reads them back as they were.
        dtype: setup.storage === "bf16" ? "BF16" : "F32",
        overwrite: true,
        // The tokenizer beside config.json, as save_pretrained writes it: eval uses it.
        tokenizer: run.tokenizer,
        files: { "state.json": JSON.stringify(await state(iteration, theta), null, 2) + "\n" },
      });
    } catch (e) {
      if (e instanceof NonFiniteWeights) {
        throw new NonFiniteRun(
          `iteration ${iteration}: θ has ${e.count} non-finite values (NaN or ±Inf) in ${e.tensor} ` +
            `after the update; likely cause: the step is too large for f32 (update.alpha ` +
            `${strategy.alpha(Math.max(0, iteration - 1))}, perturb.sigma ` +
            `${strategy.sigma(Math.max(0, iteration - 1))}): lower update.alpha; ` +
            `no checkpoint of this θ was written, and ${lastGoodWords()}`,
        );
      }
      if (isDiskFull(e)) {
        throw new UserError(
          `${dir}: the disk is full; a checkpoint needs about ${formatBytes(checkpointBytes)}, ` +
            `none of this one was kept, and ${lastGoodWords()}: free space, then --resume ${outDir}`,
        );
      }
      throw runDirError(e, dir) ?? e;
    }
    lastGood = dir;
    await options.onCheckpoint?.(dir, iteration);
  };

  const every = spec.output.checkpoint_every;
  const evalEvery = spec.output.eval_every;
  let lastLine: MetricsLine | undefined;
  let t = start;
  let stopped = false;
  for (; t < total; t++) {
    // Test-only: a long synchronous block, as a big model's native kernels are (faults.ts).
    blockIteration();
    const t0 = performance.now();
    checkSchedule(t, {
      sigma: strategy.sigma(t),
      alpha: strategy.alpha(t),
      lastGood: lastGoodWords(),
    });
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
      const onMembers = options.onMembers;
      res = options.evaluator
        ? await options.evaluator(ctx)
        : reward
        ? await reward.evaluate(ctx)
        : await engine.evaluate(packed, {
          iteration: t,
          population: ask.members,
          heldOut: wantEval,
          ...(onMembers ? { onProgress: (p) => onMembers({ iteration: t, ...p }) } : {}),
        });
    } catch (e) {
      // θ_t is intact (evaluation never changes it): keep it, so --resume continues from here.
      if (!(e instanceof RunInterrupted)) throw e;
      const dir = `${outDir}/checkpoints/iter-${t}`;
      await save(dir, t);
      throw new RunInterrupted(`${e.message}; wrote ${dir}, continue with --resume ${outDir}`);
    }
    await checkFinite(res, {
      iteration: t,
      sigma: ask.sigma,
      alpha: strategy.alpha(t),
      engine,
      lastGood: lastGoodWords(),
    });
    // ‖θ_t‖, before the update; a sum of squares past f32 range says nothing, so it is left out.
    const thetaNorm = await norm.compute();
    const told = strategy.tell(t, res.fitness, {
      thetaNorm: Number.isFinite(thetaNorm) ? thetaNorm : undefined,
    });
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
      // reward_mean/max/min, tokens generated per second, eval_reward and samples where evaluated.
      ...(reward ? await reward.lineFields(ctx, res.fitness, seconds) : {}),
    };
    try {
      await appendMetrics(metricsPath, line);
    } catch (e) {
      if (!isDiskFull(e)) throw runDirError(e, metricsPath) ?? e;
      throw new UserError(
        `${metricsPath}: the disk is full at iteration ${t}; ${lastGoodWords()}: free space ` +
          `(a checkpoint needs about ${formatBytes(checkpointBytes)}), then --resume ${outDir}`,
      );
    }
    faultPoint("iteration.metrics");
    lastLine = line;
    options.onIteration?.(line, { total });
    const done = t + 1;
    if (every > 0 && done % every === 0 && done < total) {
      await save(`${outDir}/checkpoints/iter-${done}`, done);
    }
    if (options.shouldStop?.() && done < total) {
      if (!(every > 0 && done % every === 0)) {
        await save(`${outDir}/checkpoints/iter-${done}`, done);
      }
      t = done;
      stopped = true;
      break;
    }
    faultPoint("iteration.done");
  }
  if (!stopped) await save(finalDir, total);
  checksum.destroy();
  norm.destroy();
  reward?.destroy();
  return { outDir, finalDir, iterations: stopped ? t : total, startedAt, lastLine, stopped };
}

/**
 * Stops the run before iteration t when σ_t or α_t has left the f32 range the kernels compute
 * in (a decay with γ > 1 grows them each step): the load checks σ and α themselves, the
 * schedule only shows here.
 */
function checkSchedule(t: number, o: { sigma: number; alpha: number; lastGood: string }): void {
  const bad = (["sigma", "alpha"] as const).find((k) => {
    const v = o[k];
    const max = k === "sigma" ? F32_MAX / 8 : F32_MAX;
    return !(v <= max) || Math.fround(v) < F32_MIN_POSITIVE;
  });
  if (!bad) return;
  const key = bad === "sigma" ? "perturb" : "update";
  throw new NonFiniteRun(
    `iteration ${t}: ${bad === "sigma" ? "σ" : "α"}_t = ${o[bad]} is outside the f32 range ` +
      `the kernels compute in; likely cause: ${key}.decay.gamma grows ${key}.${bad} each step: ` +
      `use gamma ≤ 1 or fewer iterations; nothing of this iteration was written, and ${o.lastGood}`,
  );
}

/**
 * Stops the run when an iteration's fitness (or held-out R) is not finite, saying which of σ
 * and α is the likely cause: θ_t's own held-out R tells whether θ itself has gone bad (an update
 * too large) or only its perturbations (σ too large for f32).
 */
async function checkFinite(
  res: IterationResult,
  o: { iteration: number; sigma: number; alpha: number; engine: EsEngine; lastGood: string },
): Promise<void> {
  const bad = res.fitness.filter((f) => !Number.isFinite(f)).length;
  const heldBad = res.heldOut?.some((r) => !Number.isFinite(r)) ?? false;
  if (bad === 0 && !heldBad) return;
  let thetaBad = heldBad;
  if (!res.heldOut) {
    try {
      thetaBad = (await o.engine.heldOut()).some((r) => !Number.isFinite(r));
    } catch { /* no held-out set: assume the perturbations */ }
  }
  const cause = thetaBad
    ? `θ's own held-out loss is not finite either: its weights overflow f32 (an update too large ` +
      `for f32, update.alpha ${o.alpha}, or an init checkpoint with such weights); lower update.alpha`
    : `θ is finite but its perturbations are not: perturb.sigma ${o.sigma} is too large for f32; lower perturb.sigma`;
  const what = bad > 0
    ? `the fitness of ${bad} of ${res.fitness.length} members is not finite (NaN or ±Inf)`
    : "the held-out loss is not finite (NaN or ±Inf)";
  throw new NonFiniteRun(
    `iteration ${o.iteration}: ${what}; likely cause: ${cause}; nothing of this iteration was ` +
      `written, and ${o.lastGood}`,
  );
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
