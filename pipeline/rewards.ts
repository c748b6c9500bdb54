/**
 * The built-in rewards of the reward fitness (pipeline/stages/reward.ts): pure functions of a
 * completion and its prompt's record, each returning a number (1 for a full success where the
 * reward is a score).
 *
 * - {@link exactMatchReward}: the final answer, extracted from the completion (the whole text,
 *   its last number, or a regex's first group), equals the record's answer field; numbers
 *   compare by value, text after trimming and collapsing whitespace. 1 or 0.
 * - {@link regexReward}: the completion matches a pattern (anywhere, or whole). 1 or 0.
 * - {@link countdownReward}: Countdown (Qiu et al. 2025, "Evolution Strategies at Scale"; TinyZero):
 *   the answer is an arithmetic expression over + − × ÷ and parentheses that uses each given
 *   number at most once and evaluates exactly (rational arithmetic) to the target. 1 when it
 *   does, `formatReward` for a well-formed expression over the given numbers that misses, else 0.
 * - {@link concisenessReward}: the completion's length against a reference's (Qiu et al.'s
 *   conciseness task): 1 − min(1, |len − ref| / ref), or −|len − ref| with scale "absolute".
 *
 * Tests: tests/rewards_test.ts.
 *
 * @module
 */

/** A prompt's record: the fields its reward reads (the prompts dataset's JSON object). */
export type PromptFields = Readonly<Record<string, unknown>>;

/** What a reward scores: the completion (the generated text) and the prompt it answers. */
export interface RewardInput {
  completion: string;
  prompt: string;
  fields: PromptFields;
  /** Generated token count (for a length in tokens). */
  tokens: number;
  /** Tokens of a text (the run's tokenizer), for a reference length in tokens. */
  countTokens?: (text: string) => number;
}

/** A field of the record, or an error naming the field and the reward that needs it. */
export function field(fields: PromptFields, name: string, reward: string): unknown {
  if (!Object.hasOwn(fields, name)) {
    throw new RewardFieldError(
      `the ${reward} reward reads the field "${name}" of each prompt record, and a record lacks it; ` +
        `add it to every line of the prompts file (dataset.type prompts), or set the reward's field`,
    );
  }
  return fields[name];
}

/** A prompt record without a field its reward reads. */
export class RewardFieldError extends Error {
  override name = "RewardFieldError";
}

/** Text as exact match compares it: trimmed, runs of whitespace as one space. */
export function normalizeAnswer(s: string): string {
  return s.trim().replace(/\s+/g, " ");
}

const NUMBER = /-?\d+(?:\.\d+)?/g;

/** How exact match takes the final answer out of a completion. */
export type AnswerExtract =
  | { kind: "full" }
  | { kind: "last_number" }
  | { kind: "regex"; pattern: RegExp };

/** The final answer of `completion`, or null when there is none. */
export function extractAnswer(completion: string, how: AnswerExtract): string | null {
  switch (how.kind) {
    case "full":
      return completion;
    case "last_number": {
      const all = completion.match(NUMBER);
      return all ? all[all.length - 1] : null;
    }
    case "regex": {
      const m = how.pattern.exec(completion);
      return m ? (m[1] ?? m[0]) : null;
    }
  }
}

/** Whether two answers are the same: by value when both are numbers, else as normalized text. */
export function sameAnswer(a: string, b: string): boolean {
  const x = normalizeAnswer(a), y = normalizeAnswer(b);
  const num = /^-?\d+(?:\.\d+)?$/;
  if (num.test(x) && num.test(y)) return Number(x) === Number(y);
  return x === y;
}

/** 1 when the completion's final answer equals the record's `field`, else 0. */
export function exactMatchReward(
  input: RewardInput,
  o: { field: string; extract: AnswerExtract },
): number {
  const want = field(input.fields, o.field, "exact_match");
  const got = extractAnswer(input.completion, o.extract);
  if (got === null) return 0;
  return sameAnswer(got, String(want)) ? 1 : 0;
}

/** 1 when the completion matches `pattern` (the whole completion with `whole`), else 0. */
export function regexReward(input: RewardInput, o: { pattern: RegExp; whole: boolean }): number {
  const m = o.pattern.exec(input.completion);
  o.pattern.lastIndex = 0;
  if (!m) return 0;
  return !o.whole || (m.index === 0 && m[0].length === input.completion.length) ? 1 : 0;
}

/** An exact rational p/q, q > 0, in lowest terms. */
interface Rational {
  p: bigint;
  q: bigint;
}

function gcd(a: bigint, b: bigint): bigint {
  a = a < 0n ? -a : a;
  b = b < 0n ? -b : b;
  while (b) [a, b] = [b, a % b];
  return a;
}

function rational(p: bigint, q: bigint): Rational {
  if (q < 0n) [p, q] = [-p, -q];
  const g = gcd(p, q) || 1n;
  return { p: p / g, q: q / g };
}

/**
 * Parses and evaluates an arithmetic expression exactly: integers, + − * × / ÷, parentheses,
 * unary minus. Returns the value and the integers it used, or null when it is not a
 * well-formed expression or divides by zero.
 */
export function evaluateExpression(text: string): { value: Rational; numbers: bigint[] } | null {
  const src = text.replace(/×/g, "*").replace(/÷/g, "/").replace(/−/g, "-");
  const tokens = src.match(/\d+|[-+*/()]|\S/g) ?? [];
  let i = 0;
  const numbers: bigint[] = [];
  const fail = (): never => {
    throw new SyntaxError("not an expression");
  };
  const primary = (): Rational => {
    const t = tokens[i++];
    if (t === undefined) return fail();
    if (/^\d+$/.test(t)) {
      numbers.push(BigInt(t));
      return rational(BigInt(t), 1n);
    }
    if (t === "(") {
      const v = sum();
      if (tokens[i++] !== ")") fail();
      return v;
    }
    if (t === "-") {
      const v = primary();
      return rational(-v.p, v.q);
    }
    return fail();
  };
  const product = (): Rational => {
    let v = primary();
    while (tokens[i] === "*" || tokens[i] === "/") {
      const op = tokens[i++], w = primary();
      if (op === "*") v = rational(v.p * w.p, v.q * w.q);
      else {
        if (w.p === 0n) fail();
        v = rational(v.p * w.q, v.q * w.p);
      }
    }
    return v;
  };
  const sum = (): Rational => {
    let v = product();
    while (tokens[i] === "+" || tokens[i] === "-") {
      const op = tokens[i++], w = product();
      v = rational(op === "+" ? v.p * w.q + w.p * v.q : v.p * w.q - w.p * v.q, v.q * w.q);
    }
    return v;
  };
  try {
    if (tokens.length === 0) return null;
    const value = sum();
    if (i !== tokens.length) return null;
    return { value, numbers };
  } catch (e) {
    if (e instanceof SyntaxError) return null;
    throw e;
  }
}

/** Whether `used` takes each number at most as often as `given` holds it. */
export function usesAtMostOnce(used: readonly bigint[], given: readonly bigint[]): boolean {
  const left = new Map<bigint, number>();
  for (const g of given) left.set(g, (left.get(g) ?? 0) + 1);
  for (const u of used) {
    const n = left.get(u) ?? 0;
    if (n === 0) return false;
    left.set(u, n - 1);
  }
  return true;
}

/** The integers of a record's numbers field: a list of integers, or text holding them. */
function numbersOf(v: unknown): bigint[] | null {
  const list = Array.isArray(v) ? v : typeof v === "string" ? v.match(/\d+/g) ?? [] : null;
  if (!list) return null;
  const out: bigint[] = [];
  for (const x of list) {
    const s = String(x);
    if (!/^\d+$/.test(s)) return null;
    out.push(BigInt(s));
  }
  return out;
}

/** The expression a Countdown completion proposes: inside <tag>…</tag> when present, else its first line. */
export function countdownAnswer(completion: string, tag: string | null): string {
  if (tag) {
    const m = new RegExp(`<${tag}>([\\s\\S]*?)</${tag}>`).exec(completion);
    if (m) return m[1];
  }
  // "3+5*2=13": the part before an "=" is the expression.
  return (completion.split("\n")[0] ?? "").split("=")[0];
}

/**
 * Countdown: 1 when the expression uses each of the record's numbers at most once and equals
 * its target, `formatReward` when it is a well-formed expression over them that misses, else 0.
 */
export function countdownReward(
  input: RewardInput,
  o: { numbersField: string; targetField: string; answerTag: string | null; formatReward: number },
): number {
  const given = numbersOf(field(input.fields, o.numbersField, "countdown"));
  const targetText = String(field(input.fields, o.targetField, "countdown"));
  if (!given || !/^-?\d+$/.test(targetText.trim())) {
    throw new RewardFieldError(
      `the countdown reward needs "${o.numbersField}" to be a list of non-negative integers and ` +
        `"${o.targetField}" an integer; got ${JSON.stringify(input.fields[o.numbersField])} and ` +
        `${JSON.stringify(input.fields[o.targetField])}`,
    );
  }
  const expr = evaluateExpression(countdownAnswer(input.completion, o.answerTag));
  if (!expr || !usesAtMostOnce(expr.numbers, given)) return 0;
  const target = BigInt(targetText.trim());
  return expr.value.q === 1n && expr.value.p === target ? 1 : o.formatReward;
}

/**
 * Conciseness: the completion's length (characters, or generated tokens) against the reference
 * in the record's `field` (its text's length, or a number): relative
 * 1 − min(1, |len − ref| / max(1, ref)), or absolute −|len − ref|.
 */
export function concisenessReward(
  input: RewardInput,
  o: { field: string; unit: "chars" | "tokens"; scale: "relative" | "absolute" },
): number {
  const ref = field(input.fields, o.field, "conciseness");
  const text = String(ref);
  const target = typeof ref === "number"
    ? ref
    : o.unit === "tokens" && input.countTokens
    ? input.countTokens(text)
    : [...text].length;
  const len = o.unit === "tokens" ? input.tokens : [...input.completion].length;
  const d = Math.abs(len - target);
  return o.scale === "absolute" ? -d : 1 - Math.min(1, d / Math.max(1, target));
}
