/**
 * The ES strategy of EA4LLM as one value with `ask` and `tell`, in the manner of evosax's OpenES
 * (evosax, algorithms/distribution_based/open_es.py: `ask` samples the population around the
 * mean, `tell` turns its fitness into the update). It composes the perturb, shape and update
 * stages of a pipeline, and it is the one place where σ_t, α_t, the group multipliers m_g and
 * the antithetic fold are computed: the training loop (pipeline/run.ts), the distributed
 * coordinator and worker (pipeline/distributed.ts, evaluation and ledger replay) and the planner
 * (pipeline/engine_options.ts → pipeline/compile.ts) all go through it. The formulas are the
 * paper's (EA4LLM §3, the standard ES estimator of Salimans et al. 2017), as the pure functions
 * of pipeline/es.ts; no code is taken from evosax. The strategy holds no state: every value is a
 * function of the iteration t and the fitness, so each process derives the same numbers.
 *
 * N = population, K = N/2 antithetic pairs, n = noises (K with antithetic pairs, else N),
 * D = parameters; ε_i ~ N(0, I) is regenerated from (seed, t, i, tensor) where it is used.
 *
 * ask(t):
 *   σ_t = σ·γ_σ^⌊t/S_σ⌋                               (S_σ = 0: σ_t = σ)
 *   member j → noise i(j), sign s(j)                   (blocked antithetic order, es.ts noiseMember)
 *   θ_j = θ + s(j)·σ_t·m_σ,g·ε_i(j)                    (the engine applies m_σ,g per tensor g)
 *
 * tell(t, F):
 *   w = shape(F)                                       (z-score or rank, es.ts)
 *   α_t = α·γ_α^⌊t/S_α⌋
 *   c_j = α_t·w_j/N, or (α_t/σ_t)·w_j/N with NES      (es.ts updateCoefficients)
 *   d_i = Σ_{j: i(j)=i} s(j)·c_j                       (the fold; d_i = c_i − c_{i+K} antithetic)
 *   θ ← θ + Σ_i d_i·m_α,g·ε_i                          (the engine, one pass over θ)
 *
 * and the diagnostics of the step ({@link StepDiagnostics}): the fitness spread, the expected
 * norm of the update, and with antithetic pairs how much of the fitness variation is odd in ε.
 *
 * @module
 */
import type { Qwen3Config } from "../model/config.ts";
import { qwen3TensorSpecs } from "../model/weights.ts";
import type { EsEngineOptions } from "./engine.ts";
import {
  decayed,
  type MemberRecord,
  memberRecords,
  noiseCoefficients,
  noiseCount,
  updateCoefficients,
} from "./es.ts";
import { createStage, type PipelineSpec, stageType } from "./spec.ts";
import "./stages/mod.ts";
import { groupMultipliers } from "./stages/perturb.ts";
import type { GroupMultiplier, PerturbImpl, ShapeImpl, UpdateImpl } from "./stages/types.ts";

/** One of θ's tensors, as the strategy needs it: its HF name and its element count. */
export interface StrategyTensor {
  /** Its HF name, which decides its parameter group. */
  name: string;
  /** Its element count. */
  numel: number;
}

/** What a strategy is made of: the three ES stages, and θ's tensors. */
export interface EsStrategyOptions {
  /** N, pairing, σ and its decay, the group multipliers, the rank. */
  perturb: PerturbImpl;
  /** Fitness → weights. */
  shape: ShapeImpl;
  /** α and its decay, NES scaling. */
  update: UpdateImpl;
  /** θ's tensors, for their group multipliers and the expected update norm. */
  tensors: readonly StrategyTensor[];
}

/** What `ask(t)` gives: the population the engine evaluates at iteration t. */
export interface EsAsk {
  /** t. */
  iteration: number;
  /** σ_t. */
  sigma: number;
  /** The N members in slot order: noise i(j), sign s(j), scale s(j)·σ_t. */
  members: MemberRecord[];
}

/**
 * Diagnostics of one step, from the fitness and the coefficients alone. They change no weight.
 *
 * - `fitnessStd` = sqrt((1/N)·Σ_j (F_j − F̄)²), the population standard deviation of the raw
 *   fitness (the σ_r of z-score shaping), and `fitnessSpread` = max_j F_j − min_j F_j. A spread
 *   near f32 rounding of F (~1e-6·|F|) says σ is too small for the ranks to mean anything.
 * - `updateNormExpected` = sqrt(E‖Δθ‖²) = sqrt(Σ_g m_α,g²·numel_g · Σ_i d_i²): the root of the
 *   expected squared L2 norm of Δθ = Σ_i d_i·m_α,g·ε_i over the noise, for these coefficients.
 *   It is exact in expectation (the ε_i are independent N(0, I), so the cross terms vanish; for
 *   low-rank noise A·Bᵀ/√r has unit variance per element, so the same holds), computed without
 *   touching θ; it is not the measured norm of this step, which differs from it by a relative
 *   O(sqrt(n/D)). bf16 storage's stochastic rounding is not counted.
 * - `updateRatioExpected` = updateNormExpected / ‖θ_t‖, only when the caller passes
 *   `thetaNorm` (‖θ_t‖, before the update) to `tell`.
 * - `pairSnr`, with antithetic pairs and K ≥ 2: write pair i's fitness as its odd and even parts
 *   in ε_i, a_i = (F(+ε_i) − F(−ε_i))/2 ≈ σ_t·ε_iᵀ∇F and b_i = (F(+ε_i) + F(−ε_i))/2 − b̄ ≈
 *   (σ_t²/2)·(ε_iᵀHε_i − mean), b̄ the mean over pairs; then
 *   pairSnr = sqrt(Σ_i a_i² / Σ_i b_i²).
 *   The odd part is the slope the update is made of; the even part is curvature and evaluation
 *   noise, which the pair cancels only for a linear shaping (rank shaping lets it reorder the
 *   ranks). pairSnr ≫ 1: σ_t is in the linear regime and the pairs' differences are signal;
 *   ≈ 1: the differences are noise (f32 rounding when σ_t is tiny makes a_i and b_i alike);
 *   < 1: curvature dominates at this σ_t. Absent without pairs, with one pair, or when every
 *   b_i is 0. (|mean_i Δ_i|/std_i Δ_i of Δ_i = 2a_i would not do: E[Δ_i] = 0 for any θ, since
 *   ε and −ε are equally likely, so that ratio only measures 1/√K.)
 */
export interface StepDiagnostics {
  /** sqrt((1/N)·Σ_j (F_j − F̄)²). */
  fitnessStd: number;
  /** max_j F_j − min_j F_j. */
  fitnessSpread: number;
  /** sqrt(E‖Δθ‖²) over the noise, for these coefficients. */
  updateNormExpected: number;
  /** updateNormExpected / ‖θ_t‖, when `tell` was given ‖θ_t‖. */
  updateRatioExpected?: number;
  /** sqrt(Σ_i a_i² / Σ_i b_i²) of the pairs' odd and even parts, with K ≥ 2 antithetic pairs. */
  pairSnr?: number;
}

/** What `tell(t, F)` gives: the update of iteration t and its diagnostics. */
export interface EsTell {
  /** t. */
  iteration: number;
  /** σ_t. */
  sigma: number;
  /** α_t. */
  alpha: number;
  /** w_j = shape(F)_j, member order. */
  weights: readonly number[];
  /** d_i, one per distinct noise (n of them): what `EsEngine.update` takes. */
  coefficients: Float64Array;
  /** What the step says about σ, α and N; they change no weight. */
  diagnostics: StepDiagnostics;
}

/** Options of {@link EsStrategy.tell}. */
export interface TellOptions {
  /**
   * ‖θ_t‖, the L2 norm of the weights before the update (a run measures it on the device,
   * kernels/sum_squares.ts WeightsNorm): then the diagnostics include updateRatioExpected.
   */
  thetaNorm?: number;
}

/** The ES strategy: see the module doc for the formulas. */
export interface EsStrategy {
  /** N. */
  readonly population: number;
  /** Mirrored pairs ±ε. */
  readonly antithetic: boolean;
  /** n: distinct noises per iteration, N/2 with antithetic pairs, else N. */
  readonly noises: number;
  /** Low-rank noise of every matrix (EGGROLL), or undefined for full rank. */
  readonly lowRank: { rank: number } | undefined;
  /** σ_t. */
  sigma(iteration: number): number;
  /** α_t. */
  alpha(iteration: number): number;
  /** m_g of one tensor by its HF name: its σ and α multipliers. */
  multiplier(tensor: string): GroupMultiplier;
  /** The population of iteration t. */
  ask(iteration: number): EsAsk;
  /**
   * The update of iteration t from the fitness of its N members (member order). Throws a
   * RangeError unless there is one fitness per member.
   */
  tell(iteration: number, fitness: readonly number[], options?: TellOptions): EsTell;
  /** The engine options the strategy decides: population, pairing, multipliers, low rank. */
  engineOptions(): Pick<EsEngineOptions, "population" | "antithetic" | "multipliers" | "lowRank">;
}

/** Composes the perturb, shape and update stages into the ES strategy. */
export function createStrategy(o: EsStrategyOptions): EsStrategy {
  const { perturb, shape, update } = o;
  const N = perturb.population, antithetic = perturb.antithetic;
  const noises = noiseCount(N, antithetic); // throws for an odd population with pairs
  const known = new Map(o.tensors.map((t) => [t.name, groupMultipliers(perturb.groups, t.name)]));
  const multiplier = (tensor: string): GroupMultiplier => {
    const m = known.get(tensor) ?? groupMultipliers(perturb.groups, tensor);
    return { sigma: m.sigma, alpha: m.alpha };
  };
  // Σ_g m_α,g²·numel_g: E‖Δθ‖² = this · Σ_i d_i².
  const alphaMass = o.tensors.reduce((s, t) => s + known.get(t.name)!.alpha ** 2 * t.numel, 0);
  const sigma = (t: number) => decayed(perturb.sigma, perturb.decay.gamma, perturb.decay.every, t);
  const alpha = (t: number) => decayed(update.alpha, update.decay.gamma, update.decay.every, t);
  return {
    population: N,
    antithetic,
    noises,
    lowRank: perturb.lowRank,
    sigma,
    alpha,
    multiplier,
    ask(t) {
      const s = sigma(t);
      return { iteration: t, sigma: s, members: memberRecords(N, antithetic, s) };
    },
    tell(t, fitness, options = {}) {
      if (fitness.length !== N) {
        throw new RangeError(
          `tell(${t}): ${fitness.length} fitness values for a population of ${N}`,
        );
      }
      const s = sigma(t), a = alpha(t);
      const w = shape.shape(fitness);
      if (w.length !== N) {
        throw new RangeError(`the shape stage gave ${w.length} weights for ${N} fitness values`);
      }
      const c = updateCoefficients(w, { alpha: a, sigma: s, nes: update.nes, population: N });
      const d = noiseCoefficients(c, antithetic);
      return {
        iteration: t,
        sigma: s,
        alpha: a,
        weights: w,
        coefficients: d,
        diagnostics: stepDiagnostics(fitness, d, {
          antithetic,
          alphaMass,
          thetaNorm: options.thetaNorm,
        }),
      };
    },
    engineOptions: () => ({
      population: N,
      antithetic,
      multipliers: multiplier,
      lowRank: perturb.lowRank,
    }),
  };
}

/** The strategy of a pipeline: its perturb, shape and update stages over the model's tensors. */
export function strategyFromSpec(spec: PipelineSpec, config: Qwen3Config): EsStrategy {
  return createStrategy({
    perturb: createStage(spec, "perturb"),
    shape: createStage(spec, "shape"),
    update: createStage(spec, "update"),
    tensors: qwen3TensorSpecs(config).map((t) => ({
      name: t.name,
      numel: t.shape.reduce((a, b) => a * b, 1),
    })),
  });
}

/**
 * The diagnostics of a step (see {@link StepDiagnostics} for the formulas). `alphaMass` is
 * Σ_g m_α,g²·numel_g over θ's tensors.
 */
export function stepDiagnostics(
  fitness: readonly number[],
  coefficients: ArrayLike<number>,
  o: { antithetic: boolean; alphaMass: number; thetaNorm?: number },
): StepDiagnostics {
  const N = fitness.length;
  let mean = 0, max = -Infinity, min = Infinity;
  for (const f of fitness) {
    mean += f;
    max = Math.max(max, f);
    min = Math.min(min, f);
  }
  mean /= N;
  let sq = 0;
  for (const f of fitness) sq += (f - mean) ** 2;
  let dd = 0;
  for (let i = 0; i < coefficients.length; i++) dd += coefficients[i] ** 2;
  const updateNormExpected = Math.sqrt(o.alphaMass * dd);
  const out: StepDiagnostics = {
    fitnessStd: Math.sqrt(sq / N),
    fitnessSpread: max - min,
    updateNormExpected,
  };
  if (o.thetaNorm !== undefined && o.thetaNorm > 0) {
    out.updateRatioExpected = updateNormExpected / o.thetaNorm;
  }
  const snr = o.antithetic ? pairSnr(fitness) : undefined;
  if (snr !== undefined) out.pairSnr = snr;
  return out;
}

/**
 * sqrt(Σ_i a_i² / Σ_i b_i²) over the K = N/2 antithetic pairs (blocked order: member i is +ε_i,
 * member i+K is −ε_i), a_i the odd and b_i the centred even part of the pair's fitness. Undefined
 * for K < 2 or when every b_i is 0.
 */
export function pairSnr(fitness: readonly number[]): number | undefined {
  const K = fitness.length / 2;
  if (!Number.isInteger(K) || K < 2) return undefined;
  const even = Array.from({ length: K }, (_, i) => (fitness[i] + fitness[i + K]) / 2);
  const evenMean = even.reduce((s, b) => s + b, 0) / K;
  let odd2 = 0, even2 = 0;
  for (let i = 0; i < K; i++) {
    odd2 += ((fitness[i] - fitness[i + K]) / 2) ** 2;
    even2 += (even[i] - evenMean) ** 2;
  }
  if (even2 === 0) return undefined;
  return Math.sqrt(odd2 / even2);
}

/** Stage settings as a pipeline's YAML gives them, `type` optional (the default type). */
export type StageSettings = { type?: string } & Record<string, unknown>;

/**
 * The strategy of stage settings written in code as a pipeline's YAML would write them, every
 * key validated by the stage's schema and defaulted there: `esStrategy(config, { perturb:
 * { population: 16, sigma: 0.01, antithetic: true }, update: { alpha: 0.05 } })`. The types
 * default to gaussian, rank and es. An invalid setting throws the schema's error.
 */
export function esStrategy(
  config: Qwen3Config,
  settings: { perturb?: StageSettings; shape?: StageSettings; update?: StageSettings } = {},
): EsStrategy {
  const make = <K extends "perturb" | "shape" | "update">(kind: K, fallback: string) => {
    const given: StageSettings = settings[kind] ?? {};
    const type = stageType(kind, given.type ?? fallback);
    if (!type) throw new RangeError(`${kind}: no stage type "${given.type}" is registered`);
    return type.create(type.schema.parse({ ...given, type: given.type ?? fallback }));
  };
  return createStrategy({
    perturb: make("perturb", "gaussian"),
    shape: make("shape", "rank"),
    update: make("update", "es"),
    tensors: qwen3TensorSpecs(config).map((t) => ({
      name: t.name,
      numel: t.shape.reduce((a, b) => a * b, 1),
    })),
  });
}
