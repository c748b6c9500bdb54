/**
 * The one reading of a pipeline spec into engine options, shared by a run, a distributed worker
 * and the planner (pipeline/compile.ts), so all three build the same engine.
 *
 * @module
 */
import type { Qwen3Config } from "../model/config.ts";
import type { StorageDtype } from "../kernels/tensor.ts";
import { UserError } from "./errors.ts";
import { type PipelineSpec, stageType } from "./spec.ts";
import type { EsEngineOptions } from "./engine.ts";
import type { FitnessImpl, PerturbImpl } from "./stages/types.ts";

/** The implementation of a registered stage type (the loader has checked that it exists). */
export function impl<T>(kind: "perturb" | "fitness" | "shape" | "update", type: string): T {
  const t = stageType(kind, type);
  if (!t) throw new UserError(`${kind}: no stage type "${type}" is registered`);
  return t.impl as T;
}

/**
 * The engine options a pipeline asks for, θ aside: the one reading of the spec that a run, a
 * worker and the planner (pipeline/compile.ts) share. `maxSamples`: the most samples one pass
 * packs (the iteration's subset or the held-out set).
 */
export function specEngineOptions(
  spec: PipelineSpec,
  config: Qwen3Config,
  maxSamples: number,
): EsEngineOptions {
  const perturb = impl<PerturbImpl>("perturb", spec.perturb.type);
  return {
    config,
    seed: spec.seed,
    population: perturb.population(spec.perturb),
    antithetic: perturb.antithetic(spec.perturb),
    maxSamples,
    microBatch: (spec.fitness.micro_batch as number | undefined) ?? 16,
    maxLen: (spec.fitness.max_len as number | undefined) ?? 256,
    fitness: impl<FitnessImpl>("fitness", spec.fitness.type),
    multipliers: (t) => perturb.multipliers(spec.perturb, t),
    lowRank: perturb.lowRank?.(spec.perturb),
    scratch: perturb.scratch?.(spec.perturb),
    storage: modelStorage(spec),
    memberBatch: (spec.fitness.member_batch as number | "auto" | undefined) ?? 1,
  };
}

/** How the pipeline stores θ: the model stage's `storage` (f32 when a stage has none). */
export function modelStorage(spec: PipelineSpec): StorageDtype {
  return (spec.model as { storage?: StorageDtype }).storage ?? "f32";
}
