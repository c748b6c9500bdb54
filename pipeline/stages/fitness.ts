/**
 * Fitness stage `log_likelihood`: the paper's R(x;θ), the mean log-probability of each next
 * token, streamed over vocabulary chunks, averaged over the iteration's shared subset.
 *
 * @module
 */
import { z } from "zod";
import { posInt, registerStage } from "../spec.ts";

/**
 * How the engine batches samples for any fitness stage. log_likelihood spreads these keys into
 * its schema; a custom fitness may declare them too, and one that does not gets these defaults
 * ({@link fitnessBatching}).
 */
export const fitnessBatchingSchema = z.object({
  /** Samples per forward pass. Default 16 (the paper's). */
  micro_batch: posInt().default(16),
  /** Tokens per sample after truncation. Default 256 (the paper's). */
  max_len: posInt().min(2).default(256),
  /**
   * Population batching: members evaluated at once, in the same dispatches (each adds a
   * micro-batch of activations), or auto: as many as keep their activations within θ's bytes.
   * Full rank with chunks, and low rank (the group shares each x·Wᵀ); one at a time with
   * scratch: copy. Default 1.
   */
  member_batch: z.union([posInt(), z.literal("auto")]).default(1),
});

/** The batching settings of a fitness stage's validated settings, defaults filled. */
export function fitnessBatching(
  settings: Record<string, unknown>,
): z.infer<typeof fitnessBatchingSchema> {
  // Only the three keys: a custom stage's other settings are its own.
  const { micro_batch, max_len, member_batch } = settings;
  return fitnessBatchingSchema.parse({ micro_batch, max_len, member_batch });
}

registerStage({
  kind: "fitness",
  type: "log_likelihood",
  description: "R = mean over scored targets of log softmax(z_t)[x_{t+1}]; F = mean over samples",
  schema: z.strictObject({
    type: z.literal("log_likelihood"),
    ...fitnessBatchingSchema.shape,
  }),
  impl: {
    steps: (fwd, o) => fwd.fitnessSteps(o.batch, o.seqLen, o.weights, o.members),
    members: true,
  },
});
