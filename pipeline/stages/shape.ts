/**
 * Shape stages: `zscore` and `rank` fitness shaping (EA4LLM §3), pure functions of the
 * population's fitness values.
 *
 * @module
 */
import { z } from "zod";
import { registerStage } from "../spec.ts";
import { rankShape, zscoreShape } from "../es.ts";

registerStage({
  kind: "shape",
  type: "zscore",
  description: "w = (r − μ)/(σ_r + 1e-8), population std",
  schema: z.strictObject({ type: z.literal("zscore") }),
  impl: { shape: (r) => Array.from(zscoreShape(r)) },
});

registerStage({
  kind: "shape",
  type: "rank",
  description: "w = 2·rank/(N−1) − 1, ascending ranks, ties averaged",
  schema: z.strictObject({ type: z.literal("rank") }),
  impl: { shape: (r) => Array.from(rankShape(r)) },
});
