/**
 * esflow: Evolution Strategies for Qwen3-style language models on WebGPU (EA4LLM).
 *
 * The pieces a user composes:
 * - the GPU runtime ({@link acquireGpu}) and sharded device tensors;
 * - Qwen3 configs, presets, safetensors checkpoints and random init;
 * - the Qwen3 forward with the paper's log-likelihood fitness ({@link Qwen3Forward});
 * - tokenizers (built-in bytes, HF tokenizer.json, the real Qwen3 tokenizer);
 * - scoring a checkpoint on samples ({@link evaluate}), the library behind `deno task eval`.
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

export { acquireGpu, Gpu, GpuError } from "./kernels/runtime.ts";
export type { AcquireOptions, GpuFeatures, GpuLimits } from "./kernels/runtime.ts";
export { createTensor, destroyTensor, readTensor, writeTensor } from "./kernels/tensor.ts";
export type { GpuTensor, Shard } from "./kernels/tensor.ts";
export { encodeSteps, profileSteps, submitSteps } from "./kernels/program.ts";
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
