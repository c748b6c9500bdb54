/**
 * Fitness stage `reward`: every member generates completions for the iteration's prompts (the
 * same subset for all, greedy by default as in Qiu et al. 2025), a reward scores each one, and
 * the member's fitness is its mean reward; shaping and the update are the pipeline's as ever.
 *
 * ```yaml
 * dataset: { type: prompts, path: countdown.jsonl, samples_per_iteration: 32, holdout: 16 }
 * fitness:
 *   type: reward
 *   reward: { type: countdown }      # exact_match | regex | countdown | conciseness
 *   max_new_tokens: 32
 *   stop: ["\n"]
 * ```
 *
 * Custom rewards are fitness stages of their own: {@link rewardFitness} turns a scoring function
 * and the generation settings ({@link rewardSettingsShape}) into the implementation, and
 * registerStage (mod.ts) names it, e.g. examples/custom_reward.ts.
 *
 * The run side (the generation, the held-out reward, the samples) is pipeline/reward_run.ts.
 *
 * @module
 */
import { z } from "zod";
import { posInt, registerStage } from "../spec.ts";
import { fitnessBatchingSchema } from "./fitness.ts";
import type { FitnessImpl } from "./types.ts";
import {
  type AnswerExtract,
  concisenessReward,
  countdownReward,
  exactMatchReward,
  regexReward,
  type RewardInput,
} from "../rewards.ts";

/** Whether `source` compiles as a JavaScript regular expression with `flags`. */
function compiles(source: string, flags = ""): boolean {
  try {
    new RegExp(source, flags);
    return true;
  } catch {
    return false;
  }
}

const pattern = () =>
  z.string().min(1).refine(
    (s) => compiles(s),
    "not a valid regular expression (JavaScript syntax)",
  );

/** `reward: { type: exact_match }`: the final answer equals the record's answer field. */
const exactMatchSchema = z.strictObject({
  type: z.literal("exact_match"),
  /** The record's field holding the answer. Default "answer". */
  field: z.string().min(1).default("answer"),
  /**
   * How the final answer is taken from the completion: full (the whole completion), last_number,
   * or regex (the first group of `pattern`, else its match). Default full.
   */
  extract: z.enum(["full", "last_number", "regex"]).default("full"),
  /** The pattern of extract: regex. */
  pattern: pattern().optional(),
});

/** `reward: { type: regex }`: the completion matches a pattern. */
const regexSchema = z.strictObject({
  type: z.literal("regex"),
  /** A JavaScript regular expression. */
  pattern: pattern(),
  /** Its flags, of i, m, s, u. Default none. */
  flags: z.string().regex(/^[imsu]*$/, "use the flags i, m, s and u").default(""),
  /** The whole completion must match, not a part of it. Default false. */
  whole: z.boolean().default(false),
});

/** `reward: { type: countdown }`: an expression over the given numbers that hits the target. */
const countdownSchema = z.strictObject({
  type: z.literal("countdown"),
  /** The record's field with the numbers (a list of integers). Default "numbers". */
  numbers_field: z.string().min(1).default("numbers"),
  /** The record's field with the target. Default "target". */
  target_field: z.string().min(1).default("target"),
  /**
   * The expression is inside <answer_tag>…</answer_tag> when present, else the completion's
   * first line (up to an "="); null: always the first line. Default "answer".
   */
  answer_tag: z.string().regex(/^\w+$/, "a tag name of letters, digits and _").nullable()
    .default("answer"),
  /** Reward of a well-formed expression over the numbers that misses the target. Default 0. */
  format_reward: z.number().finite().default(0),
});

/** `reward: { type: conciseness }`: the completion's length against a reference's. */
const concisenessSchema = z.strictObject({
  type: z.literal("conciseness"),
  /** The record's field with the reference (a text, or a length). Default "reference". */
  field: z.string().min(1).default("reference"),
  /** Length in characters or in tokens. Default chars. */
  unit: z.enum(["chars", "tokens"]).default("chars"),
  /**
   * relative: 1 − min(1, |len − ref| / ref), in [0, 1]; absolute: −|len − ref| (Qiu et al.).
   * Default relative.
   */
  scale: z.enum(["relative", "absolute"]).default("relative"),
});

/** The built-in rewards, by `type`. */
export const builtinRewardSchema = z.discriminatedUnion("type", [
  exactMatchSchema,
  regexSchema,
  countdownSchema,
  concisenessSchema,
]);

/**
 * The settings every reward fitness shares: the batching keys of any fitness (micro_batch:
 * prompts per generation batch; max_len: prompt tokens kept, the last ones; member_batch) and
 * the generation's. Spread into a custom reward stage's schema.
 */
export const rewardSettingsShape = {
  ...fitnessBatchingSchema.shape,
  /** Most tokens generated per prompt. Default 64. */
  max_new_tokens: posInt().default(64),
  /** 0 (the default): greedy decoding, as Qiu et al.; above 0, sampling at this temperature. */
  temperature: z.number().min(0).finite().default(0),
  /** Sampling keeps the k most likely tokens; 0 (the default) keeps all. */
  top_k: z.number().int().nonnegative().default(0),
  /** Sampling keeps the smallest set of tokens reaching this probability. Default 1 (all). */
  top_p: z.number().gt(0).max(1).default(1),
  /** A completion ends at the first of these strings (not part of it). Default none. */
  stop: z.array(z.string().min(1)).default([]),
  /** Prompts in the tokenizer's Qwen3 chat template, completions ending at <|im_end|>. */
  chat: z.boolean().default(false),
  /** Prompt → completion samples of θ recorded at each evaluation. Default 4. */
  eval_samples: z.number().int().nonnegative().default(4),
};

const rewardSettingsSchema = z.object(rewardSettingsShape);

/** The generation settings of a reward fitness, validated, defaults filled. */
export type RewardSettings = z.infer<typeof rewardSettingsSchema>;

/** A reward fitness: the generation settings and the scoring function (see the module doc). */
export interface RewardFitnessImpl extends FitnessImpl {
  readonly kind: "reward";
  readonly settings: RewardSettings;
  /** The reward of one completion. */
  score(input: RewardInput): number;
  /** One line on what is rewarded. */
  readonly describe: string;
}

/** Whether a fitness implementation is a reward fitness (it generates instead of scoring text). */
export function isRewardFitness(f: FitnessImpl): f is RewardFitnessImpl {
  return (f as Partial<RewardFitnessImpl>).kind === "reward";
}

/**
 * A reward fitness from its settings and a scoring function. Its `steps` are the
 * log-likelihood's, so the engine's programs (deno task plan, a held-out check) still build; the
 * run generates instead (pipeline/reward_run.ts).
 */
export function rewardFitness(
  settings: RewardSettings & Record<string, unknown>,
  score: (input: RewardInput) => number,
  describe = "a custom reward",
): RewardFitnessImpl {
  const own = rewardSettingsSchema.parse(settings);
  return {
    kind: "reward",
    settings: own,
    score,
    describe,
    steps: (fwd, o) => fwd.fitnessSteps(o.batch, o.seqLen, o.weights, o.members),
    members: true,
  };
}

/** The scoring function of a built-in reward's settings. */
export function builtinReward(
  r: z.infer<typeof builtinRewardSchema>,
): { score: (input: RewardInput) => number; describe: string } {
  switch (r.type) {
    case "exact_match": {
      const extract: AnswerExtract = r.extract === "regex"
        ? { kind: "regex", pattern: new RegExp(r.pattern ?? "(.*)") }
        : { kind: r.extract };
      return {
        score: (input) => exactMatchReward(input, { field: r.field, extract }),
        describe: `exact match of the ${r.extract.replace("_", " ")} answer with "${r.field}"`,
      };
    }
    case "regex": {
      const re = new RegExp(r.pattern, r.flags);
      return {
        score: (input) => regexReward(input, { pattern: re, whole: r.whole }),
        describe: `${r.whole ? "whole " : ""}match of /${r.pattern}/${r.flags}`,
      };
    }
    case "countdown":
      return {
        score: (input) =>
          countdownReward(input, {
            numbersField: r.numbers_field,
            targetField: r.target_field,
            answerTag: r.answer_tag,
            formatReward: r.format_reward,
          }),
        describe: `Countdown: "${r.numbers_field}" each at most once, equal to "${r.target_field}"`,
      };
    case "conciseness":
      return {
        score: (input) =>
          concisenessReward(input, { field: r.field, unit: r.unit, scale: r.scale }),
        describe: `conciseness: length in ${r.unit} against "${r.field}" (${r.scale})`,
      };
  }
}

const rewardSchema = z.strictObject({
  type: z.literal("reward"),
  /** The built-in reward (a custom one is a fitness stage of its own: see the module doc). */
  reward: builtinRewardSchema,
  ...rewardSettingsShape,
}).superRefine((s, ctx) => {
  if (s.reward.type === "exact_match" && s.reward.extract === "regex" && !s.reward.pattern) {
    ctx.addIssue({
      code: "custom",
      path: ["reward", "extract"],
      message: "extract: regex needs a pattern (its first group is the answer); add reward.pattern",
    });
  }
});

registerStage({
  kind: "fitness",
  type: "reward",
  description: "each member generates completions of the iteration's prompts; F = mean reward",
  // The refinement keeps the object's shape (the loader lists its keys for typos).
  schema: rewardSchema as unknown as z.ZodObject<z.ZodRawShape>,
  create: (s) => {
    const settings = s as z.infer<typeof rewardSchema>;
    const r = builtinReward(settings.reward);
    return rewardFitness(settings, r.score, r.describe);
  },
});
