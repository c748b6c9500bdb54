/**
 * The ES estimator's pure functions: the float64 reference update against the independent
 * known answers of tests/fixtures/es_update.json, shaping edge cases, antithetic folding and
 * the decay schedule.
 */
import { assert, assertClose, assertEquals } from "./helpers.ts";
import {
  decayed,
  esGradient,
  esUpdateReference,
  noiseCoefficients,
  noiseMember,
  rankShape,
  type Shaping,
  updateCoefficients,
  zscoreShape,
} from "../pipeline/es.ts";

/** One case of tests/fixtures/es_update.json. */
export interface EsCase {
  name: string;
  input: {
    theta: number[];
    eps: number[][];
    r: number[];
    sigma: number;
    alpha: number;
    shaping: Shaping;
    nes: boolean;
    antithetic: boolean;
  };
  expected: { theta: number[]; g: number[]; w: number[] };
}

const CASES = (JSON.parse(
  Deno.readTextFileSync(new URL("./fixtures/es_update.json", import.meta.url)),
) as { cases: EsCase[] }).cases;

Deno.test("esUpdateReference matches every es_update.json case within 1e-9", () => {
  assertEquals(CASES.length, 5);
  for (const c of CASES) {
    const out = esUpdateReference(c.input.theta, c.input.eps, c.input.r, c.input);
    for (const key of ["w", "g", "theta"] as const) {
      try {
        assertClose(out[key], c.expected[key], { rtol: 1e-9, atol: 1e-15 });
      } catch (e) {
        throw new Error(`${c.name}.${key}: ${(e as Error).message}`);
      }
    }
  }
});

Deno.test("the coefficient path equals the reference: θ + Σ_i d_i ε_i", () => {
  for (const c of CASES) {
    const { theta, eps, r, antithetic } = c.input;
    const w = c.input.shaping === "rank" ? rankShape(r) : zscoreShape(r);
    const d = noiseCoefficients(updateCoefficients(w, c.input), antithetic);
    assertEquals(d.length, eps.length);
    const out = theta.map((t, e) => t + eps.reduce((s, row, i) => s + d[i] * row[e], 0));
    assertClose(out, c.expected.theta, { rtol: 1e-9, atol: 1e-15 });
  }
});

Deno.test("rankShape gives tied values their average rank", () => {
  // Sorted: 1 (rank 0), 2,2 (ranks 1,2 → 1.5), 5 (rank 3); N−1 = 3.
  const w = rankShape([2, 5, 1, 2]);
  assertClose(w, [2 * 1.5 / 3 - 1, 1, -1, 2 * 1.5 / 3 - 1], { atol: 1e-15 });
  assertClose(rankShape([7, 7, 7]), [0, 0, 0], { atol: 0 });
  assertClose(rankShape([3, 1, 2]), [1, -1, 0], { atol: 0 });
  assertClose(rankShape([4]), [0], { atol: 0 });
  // Independent of member order: shaping a permutation permutes the weights.
  assertClose(rankShape([5, 2, 1, 2]), [1, 0, -1, 0], { atol: 1e-15 });
});

Deno.test("zscoreShape: constant fitness gives zeros; population std (1/N)", () => {
  assertClose(zscoreShape([-4.2, -4.2, -4.2, -4.2]), [0, 0, 0, 0], { atol: 0 });
  // r = [0, 2]: mean 1, population std 1.
  assertClose(zscoreShape([0, 2]), [-1 / (1 + 1e-8), 1 / (1 + 1e-8)], { atol: 1e-15 });
  const w = zscoreShape([1, 3, 4, 9, -2]);
  assert(Math.abs(w.reduce((a, b) => a + b, 0)) < 1e-12, "weights sum to zero");
  const var1 = w.reduce((a, b) => a + b * b, 0) / w.length;
  assert(Math.abs(var1 - 1) < 1e-7, `weights have unit population variance, got ${var1}`);
});

Deno.test("esGradient averages weighted noise over N", () => {
  assertClose(esGradient([1, -1], [[1, 2], [3, 5]]), [-1, -1.5], { atol: 0 });
});

Deno.test("noiseMember maps blocked antithetic members to ±ε", () => {
  assertEquals(noiseMember(2, 6, false), { index: 2, sign: 1 });
  assertEquals(noiseMember(2, 6, true), { index: 2, sign: 1 });
  assertEquals(noiseMember(3, 6, true), { index: 0, sign: -1 });
  assertEquals(noiseMember(5, 6, true), { index: 2, sign: -1 });
  let threw = false;
  try {
    noiseMember(0, 5, true);
  } catch {
    threw = true;
  }
  assert(threw, "an odd antithetic population is an error");
  assertClose(noiseCoefficients([1, 2, 3, 10, 20, 30], true), [-9, -18, -27], { atol: 0 });
  assertClose(noiseCoefficients([1, 2, 3], false), [1, 2, 3], { atol: 0 });
});

Deno.test("updateCoefficients: α·w/N, or α/σ·w/N with NES", () => {
  assertClose(updateCoefficients([1, -0.5], { alpha: 0.1, sigma: 0.01 }), [0.05, -0.025], {
    atol: 1e-17,
  });
  assertClose(
    updateCoefficients([1, -0.5], { alpha: 0.1, sigma: 0.01, nes: true, population: 4 }),
    [2.5, -1.25],
    { atol: 1e-15 },
  );
});

Deno.test("decayed: step decay base·γ^floor(t/every); every = 0 never decays", () => {
  assertEquals(decayed(0.5, 0.1, 0, 1000), 0.5);
  assertEquals(decayed(0.5, 0.5, 10, 0), 0.5);
  assertEquals(decayed(0.5, 0.5, 10, 9), 0.5);
  assertEquals(decayed(0.5, 0.5, 10, 10), 0.25);
  assertEquals(decayed(0.5, 0.5, 10, 25), 0.125);
  assertEquals(decayed(1e-3, 1, 50, 999), 1e-3); // the paper's default γ = 1
});
