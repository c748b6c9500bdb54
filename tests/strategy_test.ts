// The ES strategy (pipeline/strategy.ts): ask/tell against the float64 reference and the
// independent fixture tests/fixtures/es_update.json, the fold's length check, σ/α decay, group
// multipliers, the step diagnostics against hand-computed values, and the typed stages it is
// made of: their schema defaults, and a cross-field error at its file:line:col.
import { assert, assertClose, assertEquals } from "./helpers.ts";
import { esUpdateReference, noiseMember, type Shaping } from "../pipeline/es.ts";
import {
  createStrategy,
  pairSnr,
  stepDiagnostics,
  strategyFromSpec,
} from "../pipeline/strategy.ts";
import { createStage, stageType } from "../pipeline/spec.ts";
import { crossFieldIssues, loadPipelineText } from "../pipeline/load.ts";
import { resolvePipeline } from "../pipeline/resolve.ts";
import { specEngineOptions } from "../pipeline/engine_options.ts";
import { UserError } from "../errors.ts";
import { fitnessBatching, maxLowRank } from "../pipeline/stages/mod.ts";
import type { PerturbImpl, ShapeImpl, UpdateImpl } from "../pipeline/stages/types.ts";
import { gaussianNoise } from "../kernels/philox.ts";
import { getPreset } from "../model/presets.ts";
import { qwen3TensorSpecs } from "../model/weights.ts";
import type { EsCase } from "./es_test.ts";

const REPO = new URL("..", import.meta.url).pathname;
const CORPUS = `${REPO}data/pride_and_prejudice.txt`;

const CASES = (JSON.parse(
  Deno.readTextFileSync(new URL("./fixtures/es_update.json", import.meta.url)),
) as { cases: EsCase[] }).cases;

/** A stage's implementation from its registered schema: the schema fills every default. */
function perturbStage(settings: Record<string, unknown>): PerturbImpl {
  const t = stageType("perturb", String(settings.type ?? "gaussian"))!;
  return t.create(t.schema.parse({ type: "gaussian", ...settings }));
}
function shapeStage(type: Shaping | string): ShapeImpl {
  const t = stageType("shape", type)!;
  return t.create(t.schema.parse({ type }));
}
function updateStage(settings: Record<string, unknown>): UpdateImpl {
  const t = stageType("update", "es")!;
  return t.create(t.schema.parse({ type: "es", ...settings }));
}

const MLP = "model.layers.0.mlp.up_proj.weight";

Deno.test("ask/tell equals esUpdateReference on every es_update.json case", () => {
  assertEquals(CASES.length, 5);
  for (const c of CASES) {
    const { theta, eps, r, sigma, alpha, shaping, nes, antithetic } = c.input;
    const strategy = createStrategy({
      perturb: perturbStage({ population: r.length, sigma, antithetic }),
      shape: shapeStage(shaping),
      update: updateStage({ alpha, nes }),
      tensors: [{ name: MLP, numel: theta.length }],
    });
    assertEquals(strategy.noises, eps.length, c.name);
    // ask: member j draws noise i(j) with sign s(j) at scale s(j)·σ.
    const ask = strategy.ask(0);
    assertEquals(ask.sigma, sigma);
    ask.members.forEach((m, j) => {
      const want = noiseMember(j, r.length, antithetic);
      assertEquals([m.slot, m.noise, m.sign, m.scale], [
        j,
        want.index,
        want.sign,
        want.sign * sigma,
      ]);
    });
    // tell: θ + Σ_i d_i ε_i is the reference update, and w the reference weights.
    const told = strategy.tell(0, r);
    const ref = esUpdateReference(theta, eps, r, c.input);
    assertClose(told.weights, ref.w, { rtol: 1e-12, atol: 1e-15 });
    assertClose(told.weights, c.expected.w, { rtol: 1e-9, atol: 1e-15 });
    assertEquals(told.coefficients.length, eps.length);
    const out = theta.map((t, e) =>
      t + eps.reduce((s, row, i) => s + told.coefficients[i] * row[e], 0)
    );
    try {
      assertClose(out, ref.theta, { rtol: 1e-12, atol: 1e-15 });
      assertClose(out, c.expected.theta, { rtol: 1e-9, atol: 1e-15 });
    } catch (e) {
      throw new Error(`${c.name}: ${(e as Error).message}`);
    }
    assertEquals([told.sigma, told.alpha], [sigma, alpha]);
  }
});

Deno.test("tell checks the fitness length: one value per member, else a RangeError", () => {
  for (const antithetic of [false, true]) {
    const strategy = createStrategy({
      perturb: perturbStage({ population: 6, antithetic }),
      shape: shapeStage("rank"),
      update: updateStage({}),
      tensors: [{ name: MLP, numel: 4 }],
    });
    assertEquals(strategy.tell(0, [1, 2, 3, 4, 5, 6]).coefficients.length, antithetic ? 3 : 6);
    for (const wrong of [[1, 2, 3], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6, 7]]) {
      let threw = false;
      try {
        strategy.tell(0, wrong);
      } catch (e) {
        threw = e instanceof RangeError && /population of 6/.test(e.message);
      }
      assert(threw, `${wrong.length} values for 6 members must throw a RangeError`);
    }
  }
  // An odd population cannot pair up.
  let threw = false;
  try {
    createStrategy({
      perturb: { ...perturbStage({ population: 6, antithetic: true }), population: 5 },
      shape: shapeStage("rank"),
      update: updateStage({}),
      tensors: [],
    });
  } catch (e) {
    threw = e instanceof RangeError;
  }
  assert(threw, "antithetic pairs need an even population");
});

Deno.test("σ_t and α_t decay by step: base·γ^floor(t/S), in ask, tell and the NES step", () => {
  const strategy = createStrategy({
    perturb: perturbStage({ population: 4, sigma: 0.02, decay: { gamma: 0.5, every: 10 } }),
    shape: shapeStage("zscore"),
    update: updateStage({ alpha: 0.1, nes: true, decay: { gamma: 0.9, every: 3 } }),
    tensors: [{ name: MLP, numel: 8 }],
  });
  for (
    const [t, sigma, alpha] of [[0, 0.02, 0.1], [9, 0.02, 0.1 * 0.9 ** 3], [
      10,
      0.01,
      0.1 * 0.9 ** 3,
    ], [25, 0.005, 0.1 * 0.9 ** 8]]
  ) {
    assertClose([strategy.sigma(t), strategy.alpha(t)], [sigma, alpha], { rtol: 1e-15, atol: 0 });
    const ask = strategy.ask(t);
    assertEquals(ask.sigma, strategy.sigma(t));
    assertEquals(ask.members.map((m) => m.scale), [1, 1, 1, 1].map((s) => s * strategy.sigma(t)));
    const r = [1, 2, 4, 8];
    const told = strategy.tell(t, r);
    assertEquals([told.sigma, told.alpha], [strategy.sigma(t), strategy.alpha(t)]);
    // NES: c_j = (α_t/σ_t)·w_j/N; no pairs, so d = c.
    const ref = esUpdateReference([0], [[1], [0], [0], [0]], r, {
      sigma: strategy.sigma(t),
      alpha: strategy.alpha(t),
      shaping: "zscore",
      nes: true,
    });
    assertClose([told.coefficients[0]], [ref.theta[0]], { rtol: 1e-12, atol: 0 });
  }
  // Without decay (every: 0) the values never change.
  const flat = createStrategy({
    perturb: perturbStage({ sigma: 0.02 }),
    shape: shapeStage("rank"),
    update: updateStage({ alpha: 0.1 }),
    tensors: [],
  });
  assertEquals([flat.sigma(0), flat.sigma(1e6), flat.alpha(1e6)], [0.02, 0.02, 0.1]);
});

Deno.test("group multipliers: role times layer ranges, one source for the engine and the norm", () => {
  const groups = {
    attention: { sigma: 0.5 },
    mlp: { alpha: 2 },
    norms: { sigma: 0, alpha: 0 },
    layers: [{ from: 1, to: 2, sigma: 0.5, alpha: 3 }],
  };
  const tensors = [
    { name: "model.embed_tokens.weight", numel: 10 },
    { name: "model.layers.0.self_attn.q_proj.weight", numel: 20 },
    { name: "model.layers.1.mlp.down_proj.weight", numel: 30 },
    { name: "model.layers.2.input_layernorm.weight", numel: 40 },
  ];
  const strategy = createStrategy({
    perturb: perturbStage({ population: 4, groups }),
    shape: shapeStage("rank"),
    update: updateStage({}),
    tensors,
  });
  const want = [
    { sigma: 1, alpha: 1 },
    { sigma: 0.5, alpha: 1 },
    { sigma: 0.5, alpha: 6 },
    { sigma: 0, alpha: 0 },
  ];
  assertEquals(tensors.map((t) => strategy.multiplier(t.name)), want);
  // The engine gets the same lookup, with the population, the pairing and low rank.
  const engine = strategy.engineOptions();
  assertEquals(tensors.map((t) => engine.multipliers(t.name)), want);
  assertEquals([engine.population, engine.antithetic, engine.lowRank], [4, false, undefined]);
  // A name outside `tensors` is computed the same way.
  assertEquals(strategy.multiplier("model.layers.2.self_attn.o_proj.weight"), {
    sigma: 0.25,
    alpha: 3,
  });
  // E‖Δθ‖² = Σ_g m_α,g²·numel_g · Σ_i d_i² = (10 + 20 + 36·30)·Σ d².
  const told = strategy.tell(0, [4, 3, 2, 1]);
  const dd = told.coefficients.reduce((s, d) => s + d * d, 0);
  assertClose([told.diagnostics.updateNormExpected], [Math.sqrt((10 + 20 + 36 * 30) * dd)], {
    rtol: 1e-14,
    atol: 0,
  });
});

Deno.test("diagnostics: fitness spread, expected update norm and its ratio, pair SNR by hand", () => {
  // N = 4 antithetic: members 0, 1 are +ε_0, +ε_1; members 2, 3 are −ε_0, −ε_1.
  const F = [3, 1, 1, 2];
  const strategy = createStrategy({
    perturb: perturbStage({
      population: 4,
      antithetic: true,
      groups: { mlp: { alpha: 2 }, norms: { alpha: 0 } },
    }),
    shape: shapeStage("rank"),
    update: updateStage({ alpha: 0.3 }),
    tensors: [{ name: MLP, numel: 100 }, { name: "model.norm.weight", numel: 10 }],
  });
  const told = strategy.tell(0, F, { thetaNorm: 10 });
  // Ranks of [3, 1, 1, 2]: 3, 0.5, 0.5, 2 → w = 2·rank/3 − 1 = [1, −2/3, −2/3, 1/3];
  // c = 0.3·w/4 = [0.075, −0.05, −0.05, 0.025]; d_0 = c_0 − c_2 = 0.125, d_1 = c_1 − c_3 = −0.075.
  assertClose(told.weights, [1, -2 / 3, -2 / 3, 1 / 3], { atol: 1e-15 });
  assertClose(told.coefficients, [0.125, -0.075], { atol: 1e-15 });
  const d = told.diagnostics;
  // Mean 1.75; squared deviations 1.5625 + 0.5625 + 0.5625 + 0.0625 = 2.75; /4 = 0.6875.
  assertClose([d.fitnessStd, d.fitnessSpread], [Math.sqrt(0.6875), 2], { atol: 1e-15 });
  // Σ_g m_α²·numel = 4·100 + 0·10 = 400; Σ d² = 0.015625 + 0.005625 = 0.02125; 400·0.02125 = 8.5.
  assertClose([d.updateNormExpected, d.updateRatioExpected!], [
    Math.sqrt(8.5),
    Math.sqrt(8.5) / 10,
  ], { atol: 1e-15 });
  // Pairs (3, 1) and (1, 2): odd parts 1 and −0.5; even parts 2 and 1.5, centred ±0.25.
  // sqrt((1 + 0.25) / (0.0625 + 0.0625)) = sqrt(10).
  assertClose([d.pairSnr!], [Math.sqrt(10)], { atol: 1e-14 });
  // No ‖θ‖, no ratio; no pairs, or a single pair, no SNR; a linear response has no even part.
  assertEquals(strategy.tell(0, F).diagnostics.updateRatioExpected, undefined);
  assertEquals(pairSnr([1, 2]), undefined);
  assertEquals(pairSnr([1, 2, 3, 4, 5]), undefined);
  assertEquals(pairSnr([2, 3, 0, -1]), undefined); // even parts 1, 1: all zero once centred
  const plain = stepDiagnostics(F, [1, 2, 3, 4], { antithetic: false, alphaMass: 1 });
  assertEquals(plain.pairSnr, undefined);
  assertClose([plain.updateNormExpected], [Math.sqrt(30)], { atol: 1e-15 });
});

Deno.test("diagnostics: the expected update norm matches the realized norm of Philox noise", () => {
  // Δθ = Σ_i d_i·m_α,g·ε_i over two tensors of 60,000 elements (m_α 1 and 0.5), 4 noises; the
  // realized norm differs from sqrt(E‖Δθ‖²) by a relative O(sqrt(n/D)) ≈ 1%.
  const D = 60_000, d = [0.3, -0.1, 0.25, 0.05];
  const names = [MLP, "model.layers.0.self_attn.q_proj.weight"];
  const alphaMass = (1 + 0.25) * D;
  const expected = stepDiagnostics([0, 1, 2, 3], d, { antithetic: false, alphaMass })
    .updateNormExpected;
  let realized = 0;
  names.forEach((_, id) => {
    const m = id === 0 ? 1 : 0.5;
    const delta = new Float64Array(D);
    d.forEach((di, i) => {
      const eps = gaussianNoise(7, 3, i, id, D);
      for (let e = 0; e < D; e++) delta[e] += di * m * eps[e];
    });
    realized += delta.reduce((s, x) => s + x * x, 0);
  });
  realized = Math.sqrt(realized);
  assert(
    Math.abs(realized / expected - 1) < 0.03,
    `realized ‖Δθ‖ ${realized} vs expected ${expected}`,
  );
});

// Only the stages, every optional key left out: the typed stages carry the schema's defaults.
const MINIMAL = `dataset:
  type: text_lines
  path: ${CORPUS}
tokenizer: { type: bytes }
model: { type: qwen3, preset: micro }
perturb: { type: gaussian }
fitness: { type: log_likelihood }
shape: { type: rank }
update: { type: es }
`;

Deno.test("typed stages: create(settings) carries the schema's defaults, and nothing restates them", () => {
  const { spec } = loadPipelineText(MINIMAL, { file: "m.yaml" });
  const ones = { sigma: 1, alpha: 1 };
  assertEquals(createStage(spec, "perturb"), {
    population: 30,
    antithetic: false,
    sigma: 1e-3,
    decay: { gamma: 1, every: 0 },
    groups: {
      embeddings: ones,
      attention: ones,
      mlp: ones,
      norms: ones,
      lm_head: ones,
      layers: [],
    },
    scratch: "chunks",
  });
  assertEquals(createStage(spec, "update"), {
    alpha: 5e-4,
    decay: { gamma: 1, every: 0 },
    nes: false,
  });
  const dataset = createStage(spec, "dataset");
  assertEquals([dataset.samplesPerIteration, dataset.holdout], [5000, 256]);
  assertEquals(createStage(spec, "model").storage, "f32");
  assertEquals(fitnessBatching(spec.fitness), { micro_batch: 16, max_len: 256, member_batch: 1 });
  // A custom fitness that declares none of the batching keys gets the same defaults.
  assertEquals(fitnessBatching({ type: "mine" }), {
    micro_batch: 16,
    max_len: 256,
    member_batch: 1,
  });
  // The planner's and the run's engine options come from them and from the strategy.
  const config = getPreset("micro");
  const options = specEngineOptions(spec, config, 64);
  assertEquals(
    [options.population, options.antithetic, options.microBatch, options.maxLen],
    [30, false, 16, 256],
  );
  assertEquals([options.memberBatch, options.scratch, options.storage], [1, "chunks", "f32"]);
  const strategy = strategyFromSpec(spec, config);
  for (const s of qwen3TensorSpecs(config)) {
    assertEquals(options.multipliers(s.name), strategy.multiplier(s.name));
  }
  const low = loadPipelineText(MINIMAL.replace("type: gaussian", "type: lowrank, rank: 3"), {
    file: "m.yaml",
  }).spec;
  assertEquals(createStage(low, "perturb").lowRank, { rank: 3 });
  assertEquals(createStage(low, "perturb").scratch, undefined);
  assertEquals(strategyFromSpec(low, config).engineOptions().lowRank, { rank: 3 });
});

Deno.test("cross-field checks: one table, each error at the file:line:col of its key", async () => {
  const config = getPreset("micro");
  const max = maxLowRank(config);
  const yaml = MINIMAL.replace(
    "perturb: { type: gaussian }",
    `perturb: { type: lowrank, rank: ${max + 1} }`,
  );
  // The load phase has nothing to say; the resolve phase names the rank.
  const loaded = loadPipelineText(yaml, { file: "r.yaml" });
  assertEquals(crossFieldIssues(loaded.spec), []);
  let message = "";
  try {
    await resolvePipeline(loaded);
  } catch (e) {
    assert(e instanceof UserError, String(e));
    message = e.message;
  }
  assert(
    message.startsWith(
      `r.yaml:6:33: perturb.rank: rank ${
        max + 1
      } exceeds min(out, in) = ${max} of the model's smallest matrix`,
    ),
    message,
  );
  // bf16 θ with low-rank noise fails when the file loads, at model.storage.
  const bf16 = yaml.replace("preset: micro }", "preset: micro, storage: bf16 }");
  message = "";
  try {
    loadPipelineText(bf16, { file: "b.yaml" });
  } catch (e) {
    message = (e as Error).message;
  }
  assert(
    message.startsWith("b.yaml:5:47: model.storage: bf16 storage needs full-rank perturbations"),
    message,
  );
  // Several faults: the first in the file, the others counted.
  const both = MINIMAL.replace(
    "perturb: { type: gaussian }",
    "perturb: { type: gaussian, population: 5, antithetic: true, groups: { layers: [{ from: 1, to: 0 }] } }",
  );
  message = "";
  try {
    loadPipelineText(both, { file: "s.yaml" });
  } catch (e) {
    message = (e as Error).message;
  }
  assert(message.startsWith("s.yaml:6:40: perturb.population: antithetic pairs"), message);
  assert(message.endsWith("(+1 more)"), message);
});

Deno.test("σ_t, α_t, the member records and the fold are computed only in the strategy", () => {
  // Every module outside pipeline/es.ts (the pure functions) and pipeline/strategy.ts (their one
  // composition) reaches them through the strategy; a second caller could drift from it. The
  // benches time kernels at a fixed σ with no strategy, so they may build records themselves.
  const calls = /\b(decayed|updateCoefficients|noiseCoefficients|memberRecords)\(/;
  const own = new Set(["pipeline/es.ts", "pipeline/strategy.ts"]);
  const found: string[] = [];
  const walk = (dir: string) => {
    for (const e of Deno.readDirSync(REPO + dir)) {
      const path = `${dir}/${e.name}`;
      if (e.isDirectory) walk(path);
      else if (e.name.endsWith(".ts") && !own.has(path) && !/^tools\/bench/.test(path)) {
        Deno.readTextFileSync(REPO + path).split("\n").forEach((line, i) => {
          if (!/^\s*(\*|\/\/)/.test(line) && calls.test(line)) found.push(`${path}:${i + 1}`);
        });
      }
    }
  };
  for (const dir of ["kernels", "model", "pipeline", "server", "tools", "examples"]) walk(dir);
  assertEquals(found, []);
});
