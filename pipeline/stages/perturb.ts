/**
 * Perturb stages `gaussian` and `lowrank`: the population of perturbations θ + σ·m_g·ε_j
 * (EA4LLM §3; low rank: EGGROLL), with antithetic pairs, group multipliers for σ and α, and σ
 * step decay. The stages only state these settings; the ES strategy (pipeline/strategy.ts)
 * computes σ_t, the member records and each tensor's multipliers from them.
 *
 * @module
 */
import { z } from "zod";
import { decaySchema, posInt, posNum, registerStage } from "../spec.ts";
import type { PerturbGroups, PerturbImpl } from "./types.ts";
import type { Qwen3Config } from "../../model/config.ts";
import { qwen3TensorSpecs } from "../../model/weights.ts";

/** Multipliers of one parameter group. */
const multiplier = z.strictObject({
  /** m_σ: scales σ for this group's tensors. Default 1. */
  sigma: z.number().nonnegative().finite().default(1),
  /** m_α: scales α for this group's tensors. Default 1. */
  alpha: z.number().nonnegative().finite().default(1),
});

/** Parameter groups: by role, and by layer range; a tensor's multiplier is the product. */
const groupsSchema = z.strictObject({
  /** model.embed_tokens (and the tied head, which is the same tensor). */
  embeddings: multiplier.prefault({}),
  /** q/k/v/o projections and their biases. */
  attention: multiplier.prefault({}),
  /** gate/up/down projections. */
  mlp: multiplier.prefault({}),
  /** every RMSNorm weight: input, post-attention, q_norm, k_norm, final. */
  norms: multiplier.prefault({}),
  /** lm_head (untied models only). */
  lm_head: multiplier.prefault({}),
  /** Layer ranges [from, to] inclusive, applied on top of the role multipliers. */
  layers: z.array(z.strictObject({
    from: z.number().int().nonnegative(),
    to: z.number().int().nonnegative(),
    sigma: z.number().nonnegative().finite().default(1),
    alpha: z.number().nonnegative().finite().default(1),
  })).default([]),
});

/** The role group of an HF Qwen3 tensor name. */
export function tensorGroup(
  name: string,
): "embeddings" | "attention" | "mlp" | "norms" | "lm_head" {
  if (name === "model.embed_tokens.weight") return "embeddings";
  if (name === "lm_head.weight") return "lm_head";
  if (name.includes("norm")) return "norms";
  if (name.includes(".self_attn.")) return "attention";
  return "mlp";
}

/** The layer index of a tensor name, or -1 outside the layers. */
export function tensorLayer(name: string): number {
  const m = /^model\.layers\.(\d+)\./.exec(name);
  return m ? Number(m[1]) : -1;
}

/** σ and α multipliers of a tensor: its role group's times every layer range that holds it. */
export function groupMultipliers(
  groups: PerturbGroups,
  name: string,
): { sigma: number; alpha: number } {
  const g = groups[tensorGroup(name)];
  let sigma = g.sigma, alpha = g.alpha;
  const layer = tensorLayer(name);
  for (const r of groups.layers) {
    if (layer >= r.from && layer <= r.to) {
      sigma *= r.sigma;
      alpha *= r.alpha;
    }
  }
  return { sigma, alpha };
}

/** The settings gaussian and lowrank share. */
const populationSettings = {
  /** N: members per iteration. Default 30 (the paper's). */
  population: posInt().min(2).default(30),
  /** σ: noise scale. Default 1e-3 (the paper's). */
  sigma: posNum().default(1e-3),
  /** Mirrored pairs ±ε (blocked order +ε_1..+ε_K, −ε_1..−ε_K); needs an even population. Default false. */
  antithetic: z.boolean().default(false),
  /** σ decay: σ_t = σ·γ_σ^floor(t/S_σ). Default off. */
  decay: decaySchema.prefault({}),
  /** Group multipliers for σ and α. Default all 1. */
  groups: groupsSchema.prefault({}),
};

const gaussianSchema = z.strictObject({
  type: z.literal("gaussian"),
  ...populationSettings,
  /**
   * Where a member's perturbed matrices live: `chunks` forms each row chunk right where the
   * forward reads it (scratch ≈ θ/16); `copy` keeps a whole perturbed copy of θ (scratch = θ),
   * forming the noise once per member instead of once per micro-batch. Default chunks.
   */
  scratch: z.enum(["chunks", "copy"]).default("chunks"),
});

const lowrankSchema = z.strictObject({
  type: z.literal("lowrank"),
  /** r: rank of each matrix's perturbation A·Bᵀ, 1..min(out, in). Default 1. */
  rank: posInt().default(1),
  ...populationSettings,
});

/** The population settings both types share, as the strategy reads them. */
function population(s: z.infer<typeof lowrankSchema> | z.infer<typeof gaussianSchema>) {
  return {
    population: s.population,
    antithetic: s.antithetic,
    sigma: s.sigma,
    decay: s.decay,
    groups: s.groups,
  };
}

registerStage({
  kind: "perturb",
  type: "gaussian",
  description: "θ + σ·m_g·ε, ε ~ N(0, I) from Philox4x32-10, regenerated from seeds, never stored",
  schema: gaussianSchema,
  create: (s): PerturbImpl => ({ ...population(s), scratch: s.scratch }),
});

/** The smallest min(out, in) over the model's matrices: the largest rank every matrix admits. */
export function maxLowRank(config: Qwen3Config): number {
  return Math.min(
    ...qwen3TensorSpecs(config).filter((s) => s.shape.length === 2).map((s) =>
      Math.min(s.shape[0], s.shape[1])
    ),
  );
}

registerStage({
  kind: "perturb",
  type: "lowrank",
  description:
    "EGGROLL: matrices θ + σ·m_g·A·Bᵀ/√r (A, B ~ N(0, I) from Philox, rank r), vectors full-rank; " +
    "members share θ, no perturbed copy",
  schema: lowrankSchema,
  create: (s): PerturbImpl => ({ ...population(s), lowRank: { rank: s.rank } }),
});
