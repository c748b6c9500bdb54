/**
 * The pipeline spec: what a pipeline YAML file says, as strict zod schemas with a documented
 * default for every key, and the stage registry that decides which `type`s each stage accepts.
 *
 * A pipeline names seven stages in order — dataset → tokenizer → model → perturb → fitness →
 * shape → update — each `{type, ...settings}`, plus the run settings name, seed, iterations and
 * output. Built-in stage types register themselves in pipeline/stages/; users add their own with
 * {@link registerStage} (for example a custom fitness) and then name them in YAML.
 *
 * @module
 */
import { z } from "zod";
import type {
  DatasetImpl,
  FitnessImpl,
  ModelImpl,
  PerturbImpl,
  ShapeImpl,
  TokenizerImpl,
  UpdateImpl,
} from "./stages/types.ts";

/** The seven stage kinds, in pipeline order. */
export const STAGE_KINDS = [
  "dataset",
  "tokenizer",
  "model",
  "perturb",
  "fitness",
  "shape",
  "update",
] as const;
/** One of {@link STAGE_KINDS}. */
export type StageKind = typeof STAGE_KINDS[number];

/** The typed implementation each stage kind's `create` returns (pipeline/stages/types.ts). */
export interface StageImpls {
  /** The corpus and the per-iteration subset size. */
  dataset: DatasetImpl;
  /** Text → token ids. */
  tokenizer: TokenizerImpl;
  /** The architecture, θ's storage and initial weights. */
  model: ModelImpl;
  /** N, pairing, σ, the group multipliers, the noise's form. */
  perturb: PerturbImpl;
  /** Each sample's R, the fitness of a member. */
  fitness: FitnessImpl;
  /** Fitness → weights. */
  shape: ShapeImpl;
  /** α, its decay, NES scaling. */
  update: UpdateImpl;
}

/** A stage type's settings schema: a strict zod object with `type: z.literal(name)`. */
export type StageSchema = ZodObjectSchema;

/**
 * zod's object schema, named here because deno doc does not link into node_modules.
 * @internal
 */
// deno-lint-ignore no-explicit-any
type ZodObjectSchema = z.ZodObject<any>;

/**
 * The settings a schema parses to, zod's `z.infer`, named here for the same reason.
 * @internal
 */
type SchemaOutput<S extends StageSchema> = z.infer<S>;

/**
 * A registered stage type: its settings schema and the factory of its implementation over the
 * schema's inferred type. The pipeline schema validates a stage's settings (defaults filled)
 * before `create` sees them, so `create` reads typed values and restates no default.
 */
export interface StageType<K extends StageKind = StageKind, S extends StageSchema = StageSchema> {
  kind: K;
  type: string;
  /** Strict zod object schema of the stage's settings, including its `type` literal. */
  schema: S;
  /** One line for `deno task plan` and docs. */
  description: string;
  /** The implementation of validated settings (see pipeline/stages/types.ts). */
  create(settings: SchemaOutput<S>): StageImpls[K];
  /** The implementation, when it was registered as one value that reads no settings. */
  impl?: StageImpls[K];
}

/**
 * What {@link registerStage} takes: the schema and either `create(settings)` or, for a stage
 * that reads no settings (a custom fitness or shape), the implementation itself as `impl`.
 */
export type StageDefinition<K extends StageKind, S extends StageSchema> =
  & { kind: K; type: string; schema: S; description: string }
  & (
    | { create(settings: SchemaOutput<S>): StageImpls[K]; impl?: undefined }
    | { impl: StageImpls[K]; create?: undefined }
  );

const registry = new Map<StageKind, Map<string, StageType>>(STAGE_KINDS.map((k) => [k, new Map()]));

/**
 * Registers a stage type so pipelines can name it. Throws if the kind is unknown or the type is
 * already registered (re-registering would silently change existing pipelines).
 *
 * @example A custom shape stage
 * ```ts
 * import { rankShape, registerStage, z } from "../mod.ts";
 * registerStage({
 *   kind: "shape",
 *   type: "centered_rank",
 *   description: "ranks in [−0.5, 0.5]",
 *   schema: z.strictObject({ type: z.literal("centered_rank") }),
 *   impl: { shape: (r) => Array.from(rankShape(r), (w) => w / 2) },
 * });
 * ```
 */
export function registerStage<K extends StageKind, S extends StageSchema>(
  stage: StageDefinition<K, S>,
): void {
  const kind = registry.get(stage.kind);
  if (!kind) {
    throw new Error(`unknown stage kind "${stage.kind}"; kinds are ${STAGE_KINDS.join(", ")}`);
  }
  if (kind.has(stage.type)) {
    throw new Error(`stage type ${stage.kind}.${stage.type} is already registered`);
  }
  const { impl } = stage;
  const create = stage.create ?? (() => impl!);
  const type: StageType<K, S> = {
    kind: stage.kind,
    type: stage.type,
    schema: stage.schema,
    description: stage.description,
    create,
    ...(impl !== undefined ? { impl } : {}),
  };
  // The registry holds every kind's types; stageType() gives each back under its own kind.
  kind.set(stage.type, type as unknown as StageType);
}

/** The registered types of one stage kind. */
export function stageTypes<K extends StageKind>(kind: K): StageType<K>[] {
  return [...registry.get(kind)!.values()] as StageType<K>[];
}

/** One registered stage type, or undefined. */
export function stageType<K extends StageKind>(kind: K, type: string): StageType<K> | undefined {
  return registry.get(kind)!.get(type) as StageType<K> | undefined;
}

/**
 * The implementation of a pipeline's stage of `kind`: its registered type's `create` over the
 * validated settings. The loader admits registered types only, so a missing one is a bug.
 */
export function createStage<K extends StageKind>(spec: PipelineSpec, kind: K): StageImpls[K] {
  const settings = spec[kind];
  const type = stageType(kind, settings.type);
  if (!type) throw new Error(`${kind} stage type "${settings.type}" is not registered`);
  return type.create(settings);
}

/** A positive integer. */
export const posInt = () => z.number().int().positive();
/** A finite number > 0. */
export const posNum = () => z.number().positive().finite();

/** Step decay: the value is multiplied by `gamma` every `every` iterations (every 0: never). */
export const decaySchema = z.strictObject({
  /** γ: factor applied at each step. Default 1 (no decay), as the paper's runs. */
  gamma: posNum().default(1),
  /** S: iterations between steps; 0 disables decay. Default 0. */
  every: z.number().int().nonnegative().default(0),
});

/** The run's output settings. */
export const outputSchema = z.strictObject({
  /** Run directory: metrics.jsonl, checkpoints/, final/. Default runs/<name>. */
  dir: z.string().min(1).optional(),
  /** Write checkpoints/iter-N every this many iterations; 0 only at the end. Default 50. */
  checkpoint_every: z.number().int().nonnegative().default(50),
  /** Evaluate the held-out loss every this many iterations (and at 0 and the last). Default 10. */
  eval_every: posInt().default(10),
  /** Status server settings (issue 4). */
  status: z.strictObject({
    /** Port of the status server on 127.0.0.1; 0 picks a free one. Default 8787. */
    port: z.number().int().min(0).max(65535).default(8787),
  }).prefault({}),
});

/** Builds the whole-pipeline schema from what is registered now. */
// deno-lint-ignore no-explicit-any
export function pipelineSchema(): z.ZodObject<any> {
  const stages = Object.fromEntries(STAGE_KINDS.map((kind) => {
    const types = stageTypes(kind);
    if (types.length === 0) throw new Error(`no ${kind} stage types are registered`);
    const union = types.length === 1 ? types[0].schema : z.discriminatedUnion(
      "type",
      types.map((t) => t.schema) as [z.ZodObject, z.ZodObject, ...z.ZodObject[]],
    );
    return [kind, union];
  }));
  return z.strictObject({
    /** Run name: the default output dir and the status page title. */
    name: z.string().regex(/^[A-Za-z0-9._-]+$/, "use letters, digits, '.', '_' and '-'").default(
      "esflow-run",
    ),
    /** Run seed: noise, data subsets, held-out split and random init all derive from it. Default 1234. */
    seed: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER).default(1234),
    /** Total ES iterations. Default 1000 (the paper's). */
    iterations: posInt().default(1000),
    /**
     * Where the kernels run: auto (WebGPU on a real GPU, else the native CPU backend), webgpu or
     * cpu. `--backend` overrides it. Default auto.
     */
    backend: z.enum(["auto", "webgpu", "cpu"]).default("auto"),
    ...stages,
    output: outputSchema.prefault({}),
  });
}

/** A validated pipeline: every key present (defaults filled), stage settings by kind. */
export interface PipelineSpec {
  /** Run name: the default output dir and the status page title. */
  name: string;
  /** Run seed: noise, data subsets, held-out split and random init derive from it. */
  seed: number;
  /** Total ES iterations. */
  iterations: number;
  /** Where the kernels run. */
  backend: "auto" | "webgpu" | "cpu";
  /** The dataset stage's settings. */
  dataset: { type: string } & Record<string, unknown>;
  /** The tokenizer stage's settings. */
  tokenizer: { type: string } & Record<string, unknown>;
  /** The model stage's settings. */
  model: { type: string } & Record<string, unknown>;
  /** The perturb stage's settings. */
  perturb: { type: string } & Record<string, unknown>;
  /** The fitness stage's settings. */
  fitness: { type: string } & Record<string, unknown>;
  /** The shape stage's settings. */
  shape: { type: string } & Record<string, unknown>;
  /** The update stage's settings. */
  update: { type: string } & Record<string, unknown>;
  /** Where the run writes, how often it checkpoints and evaluates, its status port. */
  output: {
    /** Run directory; absent: runs/<name>. */
    dir?: string;
    /** Iterations between checkpoints; 0 only at the end. */
    checkpoint_every: number;
    /** Iterations between held-out evaluations. */
    eval_every: number;
    /** The status server's port on 127.0.0.1; 0 picks a free one. */
    status: { port: number };
  };
}
