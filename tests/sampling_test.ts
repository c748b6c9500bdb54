// Choosing the next token (model/sampling.ts): greedy, and sampling whose frequencies over a
// uniform grid of u equal softmax(z/T) restricted to what top-k and top-p keep.
import { assert, assertEquals } from "./helpers.ts";
import { argmax, checkSampling, sampleToken, samplingDraws } from "../model/sampling.ts";

const LOGITS = [1.0, 3.0, -2.0, 2.5, 3.0, 0.0];

/** Frequencies of each token over n evenly spaced u. */
function frequencies(o: { temperature: number; topK?: number; topP?: number }, n = 20000) {
  const f = new Array(LOGITS.length).fill(0);
  for (let i = 0; i < n; i++) f[sampleToken(LOGITS, { ...o, u: (i + 0.5) / n })] += 1 / n;
  return f;
}

function softmax(z: number[], t: number, keep: number[]): number[] {
  const e = z.map((v, i) => keep.includes(i) ? Math.exp(v / t) : 0);
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

function near(a: number[], b: number[], tol = 1e-3) {
  a.forEach((v, i) => assert(Math.abs(v - b[i]) <= tol, `token ${i}: ${v} vs ${b[i]}`));
}

Deno.test("greedy is the argmax, the lowest id on ties", () => {
  assertEquals(argmax(LOGITS), 1);
  assertEquals(sampleToken(LOGITS, { u: 0.99 }), 1);
  assertEquals(sampleToken(LOGITS, { temperature: 0, u: 0.5 }), 1);
  assertEquals(argmax([0, 5, 1, 5, 9], 1, 3), 0);
});

Deno.test("temperature sampling follows softmax(z/T)", () => {
  for (const t of [0.5, 1, 2]) {
    near(frequencies({ temperature: t }), softmax(LOGITS, t, [0, 1, 2, 3, 4, 5]));
  }
});

Deno.test("top-k keeps the k most likely tokens, top-p the smallest set reaching p", () => {
  near(frequencies({ temperature: 1, topK: 3 }), softmax(LOGITS, 1, [1, 3, 4]));
  // Probabilities at T=1: tokens 1 and 4 hold 0.35 each, 3 holds 0.21: p = 0.6 keeps 1 and 4.
  near(frequencies({ temperature: 1, topP: 0.6 }), softmax(LOGITS, 1, [1, 4]));
  near(frequencies({ temperature: 1, topP: 0.75 }), softmax(LOGITS, 1, [1, 3, 4]));
  near(frequencies({ temperature: 1, topK: 2, topP: 0.9 }), softmax(LOGITS, 1, [1, 4]));
});

Deno.test("draws are a pure function of (seed, step, sequence), in [0, 1)", () => {
  const a = samplingDraws(5), b = samplingDraws(5), c = samplingDraws(6);
  const xs = Array.from({ length: 100 }, (_, i) => a(i % 10, Math.floor(i / 10)));
  assertEquals(xs, Array.from({ length: 100 }, (_, i) => b(i % 10, Math.floor(i / 10))));
  assert(xs.every((x) => x >= 0 && x < 1));
  assert(xs.some((x, i) => x !== c(i % 10, Math.floor(i / 10))));
  const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
  assert(Math.abs(mean - 0.5) < 0.1, `mean ${mean}`);
});

Deno.test("bad sampling settings are refused", () => {
  for (const bad of [{ temperature: -1 }, { topK: 1.5 }, { topP: 0 }, { topP: 1.2 }]) {
    let threw = false;
    try {
      checkSampling(bad);
    } catch {
      threw = true;
    }
    assert(threw, JSON.stringify(bad));
  }
});
