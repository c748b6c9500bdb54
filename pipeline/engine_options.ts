/**
 * The one reading of a pipeline spec into engine options, shared by a run, a distributed worker
 * and the planner (pipeline/compile.ts), so all three build the same engine.
 *
 * @module
 */
import type { Qwen3Config } from "../model/config.ts";
import { createStage, type PipelineSpec } from "./spec.ts";
import type { EsEngineOptions } from "./engine.ts";
import { type EsStrategy, strategyFromSpec } from "./strategy.ts";
import { fitnessBatching } from "./stages/fitness.ts";

/**
 * The engine options a pipeline asks for, θ aside: the one reading of the spec that a run, a
 * worker and the planner (pipeline/compile.ts) share. `maxSamples`: the most samples one pass
 * packs (the iteration's subset or the held-out set). The population, its pairing, the group
 * multipliers and low rank come from the ES strategy (pipeline/strategy.ts): `strategy` when the
 * caller has one, else the pipeline's.
 */
export function specEngineOptions(
  spec: PipelineSpec,
  config: Qwen3Config,
  maxSamples: number,
  options: { strategy?: EsStrategy } = {},
): EsEngineOptions {
  const strategy = options.strategy ?? strategyFromSpec(spec, config);
  const batching = fitnessBatching(spec.fitness);
  return {
    config,
    seed: spec.seed,
    ...strategy.engineOptions(),
    maxSamples,
    microBatch: batching.micro_batch,
    maxLen: batching.max_len,
    fitness: createStage(spec, "fitness"),
    scratch: createStage(spec, "perturb").scratch,
    storage: createStage(spec, "model").storage,
    memberBatch: batching.member_batch,
  };
}
