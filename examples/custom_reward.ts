// A custom reward: a fitness stage of its own, registered from TypeScript and named in YAML.
//
//   import "./examples/custom_reward.ts";   // registers fitness type vowel_reward
//   fitness: { type: vowel_reward, vowel: e, max_new_tokens: 16 }
//
// The stage's schema takes the generation settings every reward fitness has
// (rewardSettingsShape: max_new_tokens, temperature, stop, micro_batch, …) plus its own `vowel`;
// rewardFitness turns them and a scoring function into the implementation, and the run
// generates, scores and shapes as for a built-in reward (pipeline/reward_run.ts). Here a
// completion's reward is the share of its characters that are the vowel.
//
// tests/reward_test.ts trains with it.
import { registerStage, z } from "../mod.ts";
import { rewardFitness, type RewardSettings, rewardSettingsShape } from "../pipeline/stages/mod.ts";

/** The fitness type this example registers. */
export const VOWEL_REWARD_TYPE = "vowel_reward";

registerStage({
  kind: "fitness",
  type: VOWEL_REWARD_TYPE,
  description: "reward: the share of a completion's characters that are one vowel",
  schema: z.strictObject({
    type: z.literal(VOWEL_REWARD_TYPE),
    /** The vowel rewarded. Default a. */
    vowel: z.enum(["a", "e", "i", "o", "u"]).default("a"),
    ...rewardSettingsShape,
  }),
  create: (s) =>
    rewardFitness(
      s as RewardSettings,
      ({ completion }) =>
        [...completion].filter((c) => c === s.vowel).length / Math.max(1, [...completion].length),
      `the share of "${s.vowel}" in the completion`,
    ),
});
