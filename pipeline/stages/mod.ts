/**
 * The built-in stage types. Importing this module registers them.
 *
 * @module
 */
import "./dataset.ts";
import "./tokenizer.ts";
import "./model.ts";
import "./perturb.ts";
import "./fitness.ts";
import "./reward.ts";
import "./prompts.ts";
import "./shape.ts";
import "./update.ts";
export type * from "./types.ts";
export { groupMultipliers, maxLowRank, tensorGroup, tensorLayer } from "./perturb.ts";
export { fitnessBatching, fitnessBatchingSchema } from "./fitness.ts";
export { resolvePath } from "./dataset.ts";
export {
  builtinReward,
  isRewardFitness,
  rewardFitness,
  type RewardFitnessImpl,
  type RewardSettings,
  rewardSettingsShape,
} from "./reward.ts";
export { parsePromptSample, type PromptSample, promptSampleText } from "./prompts.ts";
