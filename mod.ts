/**
 * esflow: Evolution Strategies for Qwen3-style language models on WebGPU and the CPU (EA4LLM).
 *
 * The pieces a user composes, and nothing deeper (the modules under kernels/, model/, pipeline/
 * and server/ hold the rest, each with its own doc):
 * - a pipeline: {@link loadPipelineFile} (YAML, strict schemas, errors at file:line:col),
 *   {@link resolvePipeline}, {@link runTraining};
 * - a device: {@link acquireDevice} (WebGPU or the native CPU backend);
 * - a model: {@link getPreset}, {@link randomInit}, {@link openCheckpoint},
 *   {@link saveCheckpoint}, {@link loadTokenizer};
 * - the data: {@link textCorpus}, a tokenized corpus with its held-out split and each
 *   iteration's batch;
 * - the ES strategy ({@link esStrategy}, {@link createStrategy}): `ask(t)` for the population,
 *   `tell(t, fitness)` for the update's coefficients and the step's diagnostics;
 * - the engine ({@link EsEngine}) that evaluates a population and applies an update on a device;
 * - stage types of one's own ({@link registerStage}, with zod's {@link z} for the schema);
 * - the status server ({@link startStatusServer}) over a run directory ({@link RunDirSource}).
 *
 * @example Train from a pipeline file
 * ```ts
 * import { acquireDevice, loadPipelineFile, resolvePipeline, runTraining } from "./mod.ts";
 * const loaded = await loadPipelineFile("configs/pipelines/micro-smoke.yaml", {
 *   overrides: { out: "runs/smoke" },
 * });
 * const device = await acquireDevice();
 * const summary = await runTraining(device, await resolvePipeline(loaded));
 * console.log(summary.finalDir);
 * ```
 *
 * @example Compose a run in code (examples/compose.ts is the whole of it)
 * ```ts
 * import { acquireDevice, EsEngine, esStrategy, getPreset, randomInit } from "./mod.ts";
 * const device = await acquireDevice(), config = getPreset("tiny");
 * const strategy = esStrategy(config, { perturb: { population: 16, sigma: 0.01 } });
 * const engine = await EsEngine.create(device, {
 *   config,
 *   tensors: randomInit(config, { seed: 1 }),
 *   seed: 1,
 *   strategy,
 *   maxSamples: 64,
 *   microBatch: 16,
 *   maxLen: 64,
 * });
 * console.log(engine.options.population);
 * ```
 *
 * @module
 */

import { z as zod } from "zod";

/**
 * zod, for the schema of a stage of one's own ({@link registerStage}): the same instance
 * esflow's schemas are built with. The value holds every schema builder (`z.strictObject`,
 * `z.number`, …); of zod's types only `z.infer` comes along (import zod itself for the rest).
 */
export const z: typeof zod = zod;
/** zod's type helpers that come with {@link z}. */
export declare namespace z {
  /** The parsed type of a schema, `z.infer<typeof schema>`. */
  export type infer<T> = ZodOutput<T>;
}
/**
 * zod's `z.infer`, named here because deno doc cannot link into node_modules.
 * @internal
 */
type ZodOutput<T> = zod.infer<T>;
export { UserError } from "./errors.ts";

export { loadPipelineFile, loadPipelineText } from "./pipeline/load.ts";
export type { KeyPath, LoadedPipeline, PipelineOverrides } from "./pipeline/load.ts";
export type { PipelineSpec } from "./pipeline/spec.ts";
export { resolvePipeline } from "./pipeline/resolve.ts";
export type { ResolvedPipeline } from "./pipeline/resolve.ts";
export { runTraining } from "./pipeline/run.ts";
export type { MetricsLine, RunInputs, RunOptions, RunSummary } from "./pipeline/run.ts";

export { acquireDevice } from "./kernels/backend.ts";
export type { BackendChoice, DeviceOptions } from "./kernels/backend.ts";
export type { Backend, Device, DeviceLimits, MemoryUse } from "./kernels/device.ts";
export type { StorageDtype } from "./kernels/tensor.ts";
export type { Seed } from "./kernels/philox.ts";

export type { Qwen3Config } from "./model/config.ts";
export { getPreset } from "./model/presets.ts";
export { randomInit } from "./model/weights.ts";
export type {
  SafetensorsDtype,
  TensorData,
  TensorEntry,
  TensorLayout,
  TensorStream,
} from "./model/safetensors.ts";
export { openCheckpoint, saveCheckpoint } from "./model/checkpoint.ts";
export type { Checkpoint, SaveCheckpointOptions } from "./model/checkpoint.ts";
export { loadTokenizer } from "./tokenizers/mod.ts";
export type { Tokenizer } from "./tokenizers/mod.ts";

export { textCorpus } from "./pipeline/corpus.ts";
export type { CorpusOptions, TextCorpus } from "./pipeline/corpus.ts";
export type { PackedBatches, PackedLayout } from "./pipeline/data.ts";

export { createStrategy, esStrategy } from "./pipeline/strategy.ts";
export type {
  EsAsk,
  EsStrategy,
  EsStrategyOptions,
  EsTell,
  StageSettings,
  StepDiagnostics,
  StrategyTensor,
  TellOptions,
} from "./pipeline/strategy.ts";
export type { MemberRecord } from "./pipeline/es.ts";

export { EsEngine } from "./pipeline/engine.ts";
export type {
  EsEngineOptions,
  IterationResult,
  MemberProgress,
  StrategyEngineOptions,
} from "./pipeline/engine.ts";

export { rankShape } from "./pipeline/es.ts";
export { registerStage, STAGE_KINDS } from "./pipeline/spec.ts";
export type { StageDefinition, StageImpls, StageKind, StageSchema } from "./pipeline/spec.ts";
import "./pipeline/stages/mod.ts";
export type * from "./pipeline/stages/types.ts";

export { RunDirSource, startStatusServer } from "./server/mod.ts";
export type {
  RunEvent,
  RunSnapshot,
  RunSource,
  RunStateName,
  StatusAppOptions,
  StatusServer,
  StatusServerOptions,
} from "./server/mod.ts";
