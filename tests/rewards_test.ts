// The built-in rewards (pipeline/rewards.ts) as pure functions, and their pipeline settings
// (pipeline/stages/reward.ts): exact match and its answer extraction, regex, the Countdown
// verifier (numbers used at most once, exact rational arithmetic), conciseness, and a missing
// field named in one line.
import { assert, assertEquals } from "./helpers.ts";
import {
  concisenessReward,
  countdownAnswer,
  countdownReward,
  evaluateExpression,
  exactMatchReward,
  extractAnswer,
  regexReward,
  RewardFieldError,
  type RewardInput,
  sameAnswer,
  usesAtMostOnce,
} from "../pipeline/rewards.ts";
import { builtinReward } from "../pipeline/stages/reward.ts";
import { loadPipelineText } from "../pipeline/load.ts";
import { assertUserError } from "./helpers.ts";

const input = (completion: string, fields: Record<string, unknown> = {}): RewardInput => ({
  completion,
  prompt: "p",
  fields,
  tokens: [...completion].length,
});

Deno.test("exact match: full, last number, regex group; numbers by value", () => {
  const full = { kind: "full" } as const, last = { kind: "last_number" } as const;
  assertEquals(
    exactMatchReward(input(" gfa ", { answer: "gfa" }), { field: "answer", extract: full }),
    1,
  );
  assertEquals(
    exactMatchReward(input("gf", { answer: "gfa" }), { field: "answer", extract: full }),
    0,
  );
  assertEquals(
    exactMatchReward(input("so 3 + 4 = 7.0 in all", { answer: 7 }), {
      field: "answer",
      extract: last,
    }),
    1,
  );
  assertEquals(extractAnswer("no digits", last), null);
  const boxed = { kind: "regex", pattern: /\\boxed\{([^}]*)\}/ } as const;
  assertEquals(extractAnswer("x = \\boxed{42} done", boxed), "42");
  assertEquals(
    exactMatchReward(input("\\boxed{41}", { answer: "42" }), { field: "answer", extract: boxed }),
    0,
  );
  assert(sameAnswer("1.50", "1.5") && sameAnswer(" a  b ", "a b") && !sameAnswer("1", "-1"));
});

Deno.test("regex: anywhere or whole", () => {
  const r = /^[a-h]{3}$/;
  assertEquals(regexReward(input("gfa"), { pattern: r, whole: false }), 1);
  assertEquals(regexReward(input("gfa!"), { pattern: r, whole: false }), 0);
  assertEquals(regexReward(input("x12y"), { pattern: /\d+/, whole: false }), 1);
  assertEquals(regexReward(input("x12y"), { pattern: /\d+/, whole: true }), 0);
  assertEquals(regexReward(input("12"), { pattern: /\d+/, whole: true }), 1);
});

Deno.test("countdown: exact arithmetic, each number at most once, the target", () => {
  const o = {
    numbersField: "numbers",
    targetField: "target",
    answerTag: "answer",
    formatReward: 0.1,
  };
  const f = { numbers: [3, 5, 7, 2], target: 22 };
  assertEquals(countdownReward(input("<answer>3 * 5 + 7</answer>", f), o), 1);
  assertEquals(countdownReward(input("(7 - 3) * 5 + 2", f), o), 1);
  assertEquals(countdownReward(input("7 × 3 + 2 − 5 + 3 = 24", f), o), 0, "3 used twice");
  assertEquals(countdownReward(input("3 * 5 + 2", f), o), 0.1, "well formed, misses");
  assertEquals(countdownReward(input("3 * 9", f), o), 0, "9 is not given");
  assertEquals(countdownReward(input("3 * (5 +", f), o), 0, "not an expression");
  assertEquals(countdownReward(input("7 / (5 - 5)", f), o), 0, "division by zero");
  // Exact rationals: 7/2·(3+5) − 6 is 22, 7/2·(3+5) is 28.
  const g = { numbers: [7, 2, 3, 5, 6], target: 22 };
  assertEquals(countdownReward(input("7 / 2 * (3 + 5) - 6", g), o), 1);
  assertEquals(countdownReward(input("7 / 2 * (3 + 5)", g), o), 0.1);
  assertEquals(
    countdownReward(input("7 / 3 * 3 + 15", { numbers: [7, 3, 3, 15], target: 22 }), o),
    1,
  );
  assertEquals(
    countdownReward(input("(7 * 2 - 3) * 2", { numbers: "7 2 3 2", target: "22" }), o),
    1,
  );
  const e = evaluateExpression("(1 + 2) / 3 - 1 / 2");
  assert(e!.value.p === 1n && e!.value.q === 2n, "(1 + 2) / 3 - 1 / 2 is 1/2");
  assert(usesAtMostOnce([1n, 2n], [2n, 1n, 1n]) && !usesAtMostOnce([1n, 1n], [1n]));
  assertEquals(countdownAnswer("3+5=8\nmore", null), "3+5");
  let threw = false;
  try {
    countdownReward(input("1"), o);
  } catch (err) {
    threw = err instanceof RewardFieldError && (err as Error).message.includes('"numbers"');
  }
  assert(threw, "a record without numbers names the field");
});

Deno.test("conciseness: relative in [0, 1] and absolute, in chars or tokens", () => {
  const o = { field: "reference", unit: "chars", scale: "relative" } as const;
  assertEquals(concisenessReward(input("abcd", { reference: "wxyz" }), o), 1);
  assertEquals(concisenessReward(input("ab", { reference: "wxyz" }), o), 0.5);
  assertEquals(concisenessReward(input("a".repeat(20), { reference: "wxyz" }), o), 0);
  assertEquals(
    concisenessReward(input("abcdef", { reference: 4 }), { ...o, scale: "absolute" }),
    -2,
  );
  const tokens = {
    ...input("ab", { reference: "x y z" }),
    tokens: 3,
    countTokens: (t: string) => t.split(" ").length,
  };
  assertEquals(concisenessReward(tokens, { ...o, unit: "tokens" }), 1);
});

Deno.test("the reward settings: defaults, and faults at their file:line:col", async () => {
  const yaml = (reward: string) =>
    [
      "dataset: { type: prompts, path: p.jsonl }",
      "tokenizer: { type: bytes }",
      "model: { type: qwen3, preset: micro }",
      "perturb: { type: gaussian, population: 4, sigma: 0.01 }",
      `fitness: { type: reward, reward: ${reward} }`,
      "shape: { type: rank }",
      "update: { type: es, alpha: 0.01 }",
    ].join("\n");
  const loaded = loadPipelineText(yaml("{ type: countdown }"), { file: "r.yaml" });
  const f = loaded.spec.fitness as Record<string, unknown>;
  assertEquals(f.max_new_tokens, 64);
  assertEquals(f.temperature, 0);
  assertEquals((f.reward as Record<string, unknown>).answer_tag, "answer");
  const score = builtinReward(f.reward as Parameters<typeof builtinReward>[0]).score;
  assertEquals(score(input("<answer>2*3</answer>", { numbers: [2, 3], target: 6 })), 1);
  await assertUserError(
    () => loadPipelineText(yaml("{ type: exact_match, extract: regex }"), { file: "r.yaml" }),
    "r.yaml:5:",
    "needs a pattern",
  );
  await assertUserError(
    () => loadPipelineText(yaml("{ type: regex, pattern: '(' }"), { file: "r.yaml" }),
    "r.yaml:5:",
    "not a valid regular expression",
  );
  await assertUserError(
    () => loadPipelineText(yaml("{ type: exact_match, feild: answer }"), { file: "r.yaml" }),
    "r.yaml:5:",
    "feild",
  );
});
