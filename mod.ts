/**
 * esflow: Evolution Strategies for Qwen3-style language models on WebGPU (EA4LLM).
 *
 * The pieces a user composes:
 * - the GPU runtime ({@link acquireGpu}) and sharded device tensors;
 * - Qwen3 configs, presets, safetensors checkpoints and random init;
 * - the Qwen3 forward with the paper's log-likelihood fitness ({@link Qwen3Forward});
 * - tokenizers (built-in bytes, HF tokenizer.json, the real Qwen3 tokenizer);
 * - scoring a checkpoint on samples ({@link evaluate}), the library behind `deno task eval`;
 * - pipelines: {@link loadPipelineFile} (YAML + strict schemas, errors at file:line:col),
 *   {@link resolvePipeline}, {@link compile} to a {@link Plan}, {@link runTraining};
 * - the stage registry ({@link registerStage}): add a stage type from TypeScript, name it in YAML;
 * - the ES engine ({@link EsEngine}): members perturbed in row chunks where the forward reads
 *   them, optionally several members per dispatch, θ in f32 or bf16 with stochastic rounding;
 * - the memory report against Adam ({@link memoryReport});
 * - the pure ES functions of EA4LLM: shaping, coefficients, schedules, and the data subset.
 *
 * @example Train from a pipeline file
 * ```ts
 * import { acquireGpu, loadPipelineFile, resolvePipeline, runTraining } from "./mod.ts";
 * const loaded = await loadPipelineFile("configs/pipelines/micro-smoke.yaml", { overrides: { out: "runs/smoke" } });
 * const gpu = await acquireGpu();
 * const summary = await runTraining(gpu, await resolvePipeline(loaded));
 * console.log(summary.finalDir);
 * ```
 *
 * @example Score a batch of token ids with a checkpoint
 * ```ts
 * import { acquireGpu, checkpointTensors, openCheckpoint, Qwen3Forward, uploadWeights } from "./mod.ts";
 * const gpu = await acquireGpu();
 * const ckpt = await openCheckpoint("tests/fixtures/qwen3-tiny-tied-f32");
 * const weights = await uploadWeights(gpu, checkpointTensors(ckpt));
 * const fwd = new Qwen3Forward(gpu, ckpt.config, weights, { maxBatch: 1, maxSeqLen: 4 });
 * const { perSample } = await fwd.score({ inputIds: [[1, 2, 3, 4]], attentionMask: [[1, 1, 1, 1]] });
 * console.log(perSample[0], gpu.adapterName);
 * ```
 *
 * @module
 */

export { acquireGpu, adapterLimits, Gpu, GpuError } from "./kernels/runtime.ts";
export { acquireDevice, parseBackend, resolveBackend } from "./kernels/backend.ts";
export type { BackendChoice } from "./kernels/backend.ts";
export { planDevice } from "./kernels/device.ts";
export type { Backend, Device, DeviceBuffer, Program } from "./kernels/device.ts";
export type { AcquireOptions, GpuFeatures, GpuLimits } from "./kernels/runtime.ts";
export {
  createTensor,
  destroyTensor,
  fromBf16,
  readShards,
  readTensor,
  toBf16,
  writeTensor,
} from "./kernels/tensor.ts";
export type { DeviceTensor, FilledTensor, Shard, StorageDtype } from "./kernels/tensor.ts";
export { linearSteps, matmulStep, matmulSwigluStep, swigluLinearSteps } from "./kernels/matmul.ts";
export type {
  LinearMembers,
  MatmulMembers,
  MatmulOptions,
  MatmulSwigluOptions,
  MatmulTile,
} from "./kernels/matmul.ts";
export { dispatch, launch, profileSteps, submitSteps, wgslConsts } from "./kernels/program.ts";
export type { Step, StepTimes } from "./kernels/program.ts";

export type { Qwen3Config } from "./model/config.ts";
export { loadConfigFile, parseQwen3Config, qwen3ConfigToJson } from "./model/config.ts";
export { getPreset, paramCount, PRESET_NAMES } from "./model/presets.ts";
export { initTensor, qwen3TensorSpecs, randomInit } from "./model/weights.ts";
export { openSafetensors, writeSafetensors } from "./model/safetensors.ts";
export { openCheckpoint, saveCheckpoint } from "./model/checkpoint.ts";
export type { Checkpoint } from "./model/checkpoint.ts";
export { checkpointTensors, downloadWeights, uploadWeights } from "./model/device_weights.ts";
export type { DeviceWeights } from "./model/device_weights.ts";
export { Qwen3Forward, validateBatch } from "./model/forward.ts";
export type { ForwardOptions, ScoreResult, TokenBatch } from "./model/forward.ts";

export { loadTokenizer } from "./tokenizers/mod.ts";
export type { Tokenizer } from "./tokenizers/mod.ts";

export { evaluate, readTextSamples, readTokensFile } from "./pipeline/evaluate.ts";
export type { EvalResult, Samples } from "./pipeline/evaluate.ts";
export { microBatches, padBatch, splitBatch } from "./pipeline/batch.ts";
export { UserError } from "./pipeline/errors.ts";

export { loadPipelineFile, loadPipelineText } from "./pipeline/load.ts";
export type { LoadedPipeline, PipelineOverrides } from "./pipeline/load.ts";
export { resolvePipeline } from "./pipeline/resolve.ts";
export type { ResolvedPipeline } from "./pipeline/resolve.ts";
export { compile, countDispatches } from "./pipeline/compile.ts";
export type { Plan, PlanBuffer } from "./pipeline/compile.ts";
export { heldOutLoss, latestCheckpoint, runTraining } from "./pipeline/run.ts";
export type { MetricsLine, RunOptions, RunState, RunSummary } from "./pipeline/run.ts";
export { autoMemberBatch, EsEngine } from "./pipeline/engine.ts";
export type { EsEngineOptions, IterationResult } from "./pipeline/engine.ts";
export { adamBytes, memoryReport, memoryRow } from "./pipeline/memory.ts";
export type { MemoryRow } from "./pipeline/memory.ts";
export {
  createStage,
  pipelineSchema,
  registerStage,
  STAGE_KINDS,
  stageType,
  stageTypes,
} from "./pipeline/spec.ts";
export type {
  PipelineSpec,
  StageDefinition,
  StageImpls,
  StageKind,
  StageSchema,
  StageType,
} from "./pipeline/spec.ts";
export { createStrategy, pairSnr, stepDiagnostics, strategyFromSpec } from "./pipeline/strategy.ts";
export type {
  EsAsk,
  EsStrategy,
  EsStrategyOptions,
  EsTell,
  StepDiagnostics,
  StrategyTensor,
  TellOptions,
} from "./pipeline/strategy.ts";
import "./pipeline/stages/mod.ts";
export type * from "./pipeline/stages/types.ts";
export {
  decayed,
  esGradient,
  esUpdateReference,
  noiseCoefficients,
  noiseMember,
  rankShape,
  updateCoefficients,
  zscoreShape,
} from "./pipeline/es.ts";
export { gaussianNoise, philox4x32_10 } from "./kernels/philox.ts";
export {
  heldOutBatches,
  iterationBatches,
  packBatches,
  splitHoldout,
  subsetIndices,
  subsetSamples,
  tokenizeSamples,
} from "./pipeline/data.ts";
export { heldOutLoss as corpusHeldOutLoss, textCorpus } from "./pipeline/corpus.ts";
export type { CorpusOptions, TextCorpus } from "./pipeline/corpus.ts";
export { esStrategy } from "./pipeline/strategy.ts";
