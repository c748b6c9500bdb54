/**
 * What each stage kind's implementation provides to the engine. A custom stage registered with
 * registerStage supplies one of these as its `impl`.
 *
 * @module
 */
import type { Qwen3Config } from "../../model/config.ts";
import type { TensorStream } from "../../model/safetensors.ts";
import type { Tokenizer } from "../../tokenizers/mod.ts";
import type { Qwen3Forward, WeightLookup } from "../../model/forward.ts";
import type { Step } from "../../kernels/program.ts";

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
}

/** dataset: reads the corpus as a list of texts (one sample each). */
export interface DatasetImpl {
  load(settings: Record<string, unknown>, ctx: StageContext): Promise<string[]>;
}

/** tokenizer: builds the tokenizer. */
export interface TokenizerImpl {
  create(settings: Record<string, unknown>, ctx: StageContext): Promise<Tokenizer>;
}

/** model: resolves the architecture and the initial weights. */
export interface ModelImpl {
  resolve(
    settings: Record<string, unknown>,
    ctx: StageContext,
  ): Promise<{ config: Qwen3Config; tensors: () => TensorStream; source: string }>;
}

/**
 * fitness: the steps after the model body (final normed states in fwd.buffer("xn")) that leave
 * each sample's fitness R in fwd.buffer("r") (batch f32). `weights` are the member's tensors.
 * A stage that sets `members` runs several members at once (population batching): `members`
 * blocks of batch × seqLen rows, member z's weights z·memberStride into each tensor's buffers,
 * and members × batch values of R, member by member. Without it, one member per call.
 */
export interface FitnessImpl {
  steps(
    fwd: Qwen3Forward,
    o: { batch: number; seqLen: number; weights: WeightLookup; members?: number },
  ): Step[];
  /** True when steps handles o.members > 1. */
  members?: boolean;
}

/** shape: fitness values → weights w_j (pure). */
export interface ShapeImpl {
  shape(r: readonly number[]): number[];
}

/** update: step size at an iteration and the per-member coefficients c_j of θ += Σ c_j ε_j. */
export interface UpdateImpl {
  alphaAt(settings: Record<string, unknown>, iteration: number): number;
  coefficients(
    w: readonly number[],
    o: { settings: Record<string, unknown>; iteration: number; sigma: number },
  ): number[];
}

/** perturb: population, σ at an iteration, antithetic pairing, and group multipliers per tensor. */
export interface PerturbImpl {
  population(settings: Record<string, unknown>): number;
  antithetic(settings: Record<string, unknown>): boolean;
  sigmaAt(settings: Record<string, unknown>, iteration: number): number;
  /** σ and α multipliers of one tensor by its HF name. */
  multipliers(settings: Record<string, unknown>, tensor: string): { sigma: number; alpha: number };
  /**
   * Low-rank perturbations of the matrices (EGGROLL): their rank, or undefined for full-rank
   * noise everywhere. Absent means full rank.
   */
  lowRank?(settings: Record<string, unknown>): { rank: number } | undefined;
  /** Full-rank members' scratch: matrices perturbed in chunks where read, or a whole copy. */
  scratch?(settings: Record<string, unknown>): "chunks" | "copy";
  /** Checks that need the model (a rank beyond a matrix's dimensions), as located issues. */
  issues?(
    settings: Record<string, unknown>,
    o: { config: Qwen3Config },
  ): { path: (string | number)[]; message: string }[];
}
