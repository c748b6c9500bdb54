/**
 * The typed implementation of each stage kind: what a stage type's `create(settings)` returns
 * from its settings (already validated by its schema, defaults filled), and what the run, the
 * engine and the ES strategy (pipeline/strategy.ts) read. A custom stage registered with
 * registerStage supplies `create`, or `impl` when it has no settings to read.
 *
 * Implementations hold values, not getters over settings: the schema is the one place where a
 * setting's type and default live.
 *
 * @module
 */
import type { Qwen3Config } from "../../model/config.ts";
import type { TensorStream } from "../../model/safetensors.ts";
import type { Tokenizer } from "../../tokenizers/mod.ts";
import type { Qwen3Forward, WeightLookup } from "../../model/forward.ts";
import type { Step } from "../../kernels/program.ts";
import type { StorageDtype } from "../../kernels/tensor.ts";

/** Where a stage resolves relative paths and names its source in errors. */
export interface StageContext {
  /** Directory of the pipeline file: relative paths resolve against it. */
  baseDir: string;
  /** The pipeline file, for messages. */
  file: string;
  /** Run seed. */
  seed: number;
  /** Error location of a key path in the pipeline file ("file:line:col"), for semantic errors. */
  where(path: (string | number)[]): string;
  /** Reports a likely mistake that still runs (one line, with the place and the fix). */
  warn?(message: string): void;
}

/** dataset: the corpus and how much of it each iteration and the held-out split take. */
export interface DatasetImpl {
  /** M: samples drawn (without replacement) for each iteration's fitness. */
  samplesPerIteration: number;
  /** Samples held out of every subset, for the evaluation loss. */
  holdout: number;
  /** Reads the corpus as a list of texts (one sample each). */
  load(ctx: StageContext): Promise<string[]>;
}

/** tokenizer: builds the tokenizer. */
export interface TokenizerImpl {
  /** The tokenizer the pipeline names. */
  create(ctx: StageContext): Promise<Tokenizer>;
}

/** model: how θ is stored, and the architecture and the initial weights. */
export interface ModelImpl {
  /** θ's storage on the device. */
  storage: StorageDtype;
  /** The architecture, a fresh stream of the initial weights per call, and their source in words. */
  resolve(
    ctx: StageContext,
  ): Promise<{ config: Qwen3Config; tensors: () => TensorStream; source: string }>;
}

/**
 * fitness: the steps after the model body (final normed states in fwd.buffer("xn")) that leave
 * each sample's fitness R in fwd.buffer("r") (batch f32). `weights` are the member's tensors.
 * A stage that sets `members` runs several members at once (population batching): `members`
 * blocks of batch × seqLen rows, member z's weights z·memberStride into each tensor's buffers,
 * and members × batch values of R, member by member. Without it, one member per call.
 *
 * How the samples are batched (micro_batch, max_len, member_batch) is read from any fitness
 * stage's settings by name, with the defaults of `fitnessBatchingSchema` (stages/fitness.ts):
 * the engine batches every fitness alike.
 */
export interface FitnessImpl {
  /**
   * The fitness's device steps over the forward's buffers (model/forward.ts, kernels/program.ts),
   * below the public API: a fitness of one's own is usually a reward (pipeline/stages/reward.ts).
   * @internal
   */
  steps(
    fwd: Qwen3Forward,
    o: { batch: number; seqLen: number; weights: WeightLookup; members?: number },
  ): Step[];
  /** True when steps handles o.members > 1. */
  members?: boolean;
}

/** shape: fitness values → weights w_j (pure). */
export interface ShapeImpl {
  /** w = shape(F), one weight per member, member order. */
  shape(r: readonly number[]): number[];
}

/** Step decay of a schedule: the value is multiplied by `gamma` every `every` iterations. */
export interface Decay {
  /** γ: the factor of each step. */
  gamma: number;
  /** 0: never. */
  every: number;
}

/** σ and α multipliers of one parameter group. */
export interface GroupMultiplier {
  /** Multiplies σ_t for the group's tensors (0: not perturbed). */
  sigma: number;
  /** Multiplies α_t for the group's tensors (0: not updated). */
  alpha: number;
}

/** Parameter groups by role and by layer range; a tensor's multiplier is the product. */
export interface PerturbGroups {
  /** model.embed_tokens (and the tied head, which is the same tensor). */
  embeddings: GroupMultiplier;
  /** The q, k, v and o projections and their biases. */
  attention: GroupMultiplier;
  /** The gate, up and down projections. */
  mlp: GroupMultiplier;
  /** Every RMSNorm weight: input, post-attention, q_norm, k_norm, final. */
  norms: GroupMultiplier;
  /** lm_head, when the model has its own (untied). */
  lm_head: GroupMultiplier;
  /** Inclusive layer ranges [from, to], applied on top of the role multipliers. */
  layers: ({ from: number; to: number } & GroupMultiplier)[];
}

/**
 * update: the step size α and its decay, and NES scaling. The ES strategy (pipeline/strategy.ts)
 * turns these into α_t and the coefficients; the stage only says what they are.
 */
export interface UpdateImpl {
  /** α before decay. */
  alpha: number;
  /** α's step decay. */
  decay: Decay;
  /** θ ← θ + (α_t/σ_t)·ĝ instead of θ + α_t·ĝ. */
  nes: boolean;
}

/**
 * perturb: the population and the form of its noise. The ES strategy (pipeline/strategy.ts)
 * computes σ_t, the member records and the group multipliers from these values.
 */
export interface PerturbImpl {
  /** N: members per iteration. */
  population: number;
  /** Mirrored pairs ±ε in blocked order (pipeline/es.ts noiseMember). */
  antithetic: boolean;
  /** σ before decay. */
  sigma: number;
  /** σ's step decay. */
  decay: Decay;
  /** The σ and α multipliers by parameter group. */
  groups: PerturbGroups;
  /** Low-rank noise of every matrix (EGGROLL) with this rank; absent: full rank everywhere. */
  lowRank?: { rank: number };
  /** Full-rank members' scratch: matrices perturbed in chunks where read, or a whole copy. */
  scratch?: "chunks" | "copy";
}
