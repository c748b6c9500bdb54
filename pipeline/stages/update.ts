/**
 * Update stage `es`: θ ← θ + α_t·(1/N)·Σ_j w_j ε_j, or α_t/σ_t with NES scaling (EA4LLM §3),
 * with α step decay. The stage states α, its decay and NES; the ES strategy
 * (pipeline/strategy.ts) computes α_t and the coefficients.
 *
 * @module
 */
import { z } from "zod";
import { decaySchema, posNum, registerStage } from "../spec.ts";

registerStage({
  kind: "update",
  type: "es",
  description: "θ += α_t/N · Σ w_j ε_j (standard) or α_t/(σ_t N) · Σ w_j ε_j (NES)",
  schema: z.strictObject({
    type: z.literal("es"),
    /** α: step size. Default 5e-4 (the paper's). */
    alpha: posNum().default(5e-4),
    /** Scale the step by 1/σ_t (NES). Default false (the paper's). */
    nes: z.boolean().default(false),
    /** α decay: α_t = α·γ_α^floor(t/S_α). Default off. */
    decay: decaySchema.prefault({}),
  }),
  create: (s) => ({ alpha: s.alpha, decay: s.decay, nes: s.nes }),
});
