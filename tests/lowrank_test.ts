// Low-rank (EGGROLL) perturbations: the factors' statistics and their device/TypeScript twins,
// one iteration of the lowrank pipeline against a float64 reference on explicitly perturbed
// weights, byte-identical reruns, bad ranks as file:line:col errors, and the plan's memory. The
// device tests run on both backends.
import { memberRecords } from "../pipeline/es.ts";
import { readWeights, train } from "./run_helpers.ts";
import {
  assert,
  assertClose,
  assertEquals,
  assertUserError,
  tempDir,
  testBackends,
  withDevice,
} from "./helpers.ts";
import { submitSteps } from "../kernels/program.ts";
import { gaussianNoise } from "../kernels/philox.ts";
import { encodePerturbParams, encodeUpdateParams, paramStride } from "../kernels/es_update.ts";
import {
  createFactorTable,
  LOWRANK_COUNTER_BASE,
  lowRankCounterIds,
  lowRankFactors,
  lowRankFactorStep,
  lowRankProduct,
  paddedRank,
} from "../kernels/lowrank.ts";
import { loadPipelineText } from "../pipeline/load.ts";
import { resolvePipeline } from "../pipeline/resolve.ts";
import { compile } from "../pipeline/compile.ts";
import {
  iterationBatches,
  splitHoldout,
  subsetSamples,
  tokenizeSamples,
} from "../pipeline/data.ts";
import { noiseMember, updateCoefficients, zscoreShape } from "../pipeline/es.ts";
import { groupMultipliers, maxLowRank } from "../pipeline/stages/perturb.ts";
import { qwen3TensorSpecs, randomInit } from "../model/weights.ts";
import { referenceScore } from "../model/reference.ts";
import { getPreset } from "../model/presets.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const CORPUS = `${ROOT}data/pride_and_prejudice.txt`;

/** A small lowrank pipeline on the micro preset (as tests/train_test.ts's, low-rank). */
function pipelineYaml(o: {
  iterations?: number;
  rank?: number | string;
  antithetic?: boolean;
  groups?: string;
} = {}): string {
  return `
name: t
seed: 77
iterations: ${o.iterations ?? 2}
dataset: { type: text_lines, path: ${CORPUS}, max_lines: 120, samples_per_iteration: 6, holdout: 5 }
tokenizer: { type: bytes }
model: { type: qwen3, preset: micro }
perturb: { type: lowrank, rank: ${o.rank ?? 3}, population: 4, sigma: 0.02, antithetic: ${
    o.antithetic ?? false
  }${o.groups ? `, groups: ${o.groups}` : ""} }
fitness: { type: log_likelihood, micro_batch: 4, max_len: 24 }
shape: { type: zscore }
update: { type: es, alpha: 0.05 }
output: { checkpoint_every: 0, eval_every: 1, status: { port: 0 } }
`;
}

Deno.test("low-rank counters never meet the full-rank noise's", () => {
  const ids = [0, 1, 57].map(lowRankCounterIds);
  for (const { a, b } of ids) {
    assert(a >= LOWRANK_COUNTER_BASE && b === a + 1 && b <= 0xFFFFFFFF);
  }
  assertEquals(new Set(ids.flatMap((x) => [x.a, x.b])).size, 6);
  // The same (seed, iteration, member) gives A unrelated to ε of the same tensor.
  const a = lowRankFactors(3, { iteration: 0, member: 0, tensorId: 0, rows: 8, cols: 8, rank: 1 });
  const eps = gaussianNoise(3, 0, 0, 0, 8);
  assert(a.a.some((v, i) => v !== eps[i]));
});

Deno.test("σ·A·Bᵀ/√r has unit variance per element and no correlation between elements", () => {
  // Per element P = Σ_k a_k b_k/√r: E[P] = 0, E[P²] = 1, Var(P²) = 2 + 6/r; for two elements
  // E[P_x P_y] = 0 (they share a row of A or of B, or nothing). S members give standard errors
  // √((2 + 6/r)/S) for a variance and about √(Var(P_x P_y)/S) for a cross moment.
  const S = 3000, O = 6, I = 5, E = O * I;
  for (const rank of [1, 3]) {
    const samples: Float64Array[] = [];
    for (let j = 0; j < S; j++) {
      const f = lowRankFactors(11, {
        iteration: 2,
        member: j,
        tensorId: 4,
        rows: O,
        cols: I,
        rank,
      });
      samples.push(lowRankProduct(f.a, f.b, { rows: O, cols: I, rank }));
    }
    const seVar = Math.sqrt((2 + 6 / rank) / S);
    let pooled = 0;
    for (let e = 0; e < E; e++) {
      let m = 0, v = 0;
      for (const p of samples) {
        m += p[e];
        v += p[e] * p[e];
      }
      m /= S;
      v /= S;
      pooled += v / E;
      assert(Math.abs(m) < 5 / Math.sqrt(S), `rank ${rank} element ${e}: mean ${m}`);
      assert(Math.abs(v - 1) < 5 * seVar, `rank ${rank} element ${e}: E[P²] = ${v}`);
    }
    // Elements are dependent, so the pooled variance's error is at most the per-element one.
    assert(Math.abs(pooled - 1) < 5 * seVar, `rank ${rank}: pooled E[P²] = ${pooled}`);
    let worst = 0;
    for (let x = 0; x < E; x++) {
      for (let y = x + 1; y < E; y++) {
        let m = 0, m2 = 0;
        for (const p of samples) {
          const q = p[x] * p[y];
          m += q;
          m2 += q * q;
        }
        m /= S;
        const se = Math.sqrt((m2 / S - m * m) / S);
        worst = Math.max(worst, Math.abs(m) / se);
        assert(Math.abs(m) < 5 * se, `rank ${rank}: E[P_${x} P_${y}] = ${m} (se ${se})`);
      }
    }
    assert(worst > 1, "with 435 pairs some cross moment should stray past one standard error");
  }
});

testBackends(
  "lowrank_factors writes the TypeScript twin's factors in every layout",
  (backend) =>
    withDevice(backend, {}, async (gpu) => {
      const seed = 5, iteration = 3, O = 10, I = 12, rank = 3, r4 = paddedRank(rank), tensorId = 7;
      const ids = lowRankCounterIds(tensorId);
      const stride = paramStride(gpu);
      // A member: noise index 2, scale −0.5 (an antithetic member), multiplier 0.25.
      const params = gpu.createBuffer("params", stride * 2, "activations");
      gpu.write(
        params,
        encodePerturbParams([
          { seed, iteration, member: 0, scale: 1 },
          { seed, iteration, member: 2, scale: -0.5 },
        ], stride),
      );
      const n = 3, K = n * r4, coeffs = [0.5, -2, 0.125];
      const update = gpu.createBuffer("update", 16 + 4 * n, "activations");
      gpu.write(update, encodeUpdateParams({ seed, iteration, coefficients: coeffs }));
      const base = { rank, noiseStride: 0, row0: 0 };
      const table = createFactorTable(gpu, "table", [
        {
          ...base,
          tensor: ids.a,
          rows: O,
          rowStride: r4,
          kStride: 1,
          scaled: true,
          multiplier: 0.25,
        },
        { ...base, tensor: ids.b, rows: I, rowStride: 1, kStride: I, scaled: false, multiplier: 1 },
        // The update's Ã on rows [3, 8) of A (a shard that starts mid-block), and B̃.
        {
          rank,
          tensor: ids.a,
          row0: 3,
          rows: 5,
          rowStride: K,
          noiseStride: r4,
          kStride: 1,
          scaled: true,
          multiplier: 0.5,
        },
        {
          rank,
          tensor: ids.b,
          row0: 0,
          rows: I,
          rowStride: K,
          noiseStride: r4,
          kStride: 1,
          scaled: false,
          multiplier: 1,
        },
      ]);
      const a = gpu.createBuffer("a", O * r4 * 4, "activations"),
        bt = gpu.createBuffer("bt", r4 * I * 4, "activations");
      const at = gpu.createBuffer("at", 5 * K * 4, "activations"),
        bb = gpu.createBuffer("bb", I * K * 4, "activations");
      const member = { buffer: params, offset: stride, size: 32 };
      submitSteps(gpu, [
        lowRankFactorStep(gpu, {
          label: "a",
          table,
          index: 0,
          params: member,
          out: a,
          mode: "member",
        }),
        lowRankFactorStep(gpu, {
          label: "b",
          table,
          index: 1,
          params: member,
          out: bt,
          mode: "member",
        }),
        lowRankFactorStep(gpu, {
          label: "ã",
          table,
          index: 2,
          params: update,
          out: at,
          mode: "update",
          noises: n,
        }),
        lowRankFactorStep(gpu, {
          label: "b̃",
          table,
          index: 3,
          params: update,
          out: bb,
          mode: "update",
          noises: n,
        }),
      ]);
      const [ga, gbt, gat, gbb] = await Promise.all([
        gpu.readF32(a, O * r4),
        gpu.readF32(bt, r4 * I),
        gpu.readF32(at, 5 * K),
        gpu.readF32(bb, I * K),
      ]);
      const twin = (member: number) =>
        lowRankFactors(seed, { iteration, member, tensorId, rows: O, cols: I, rank });
      const f = twin(2);
      const wantA = new Float64Array(O * r4), wantBt = new Float64Array(r4 * I);
      for (let o = 0; o < O; o++) {
        for (let k = 0; k < rank; k++) wantA[o * r4 + k] = -0.125 * f.a[o * rank + k];
      }
      for (let i = 0; i < I; i++) {
        for (let k = 0; k < rank; k++) wantBt[k * I + i] = f.b[i * rank + k];
      }
      assertClose(ga, wantA, { atol: 1e-6, rtol: 1e-6 });
      assertClose(gbt, wantBt, { atol: 1e-6, rtol: 1e-6 });
      const wantAt = new Float64Array(5 * K), wantBb = new Float64Array(I * K);
      for (let i = 0; i < n; i++) {
        const g = twin(i);
        for (let o = 3; o < 8; o++) {
          for (let k = 0; k < rank; k++) {
            wantAt[(o - 3) * K + i * r4 + k] = 0.5 * coeffs[i] * g.a[o * rank + k];
          }
        }
        for (let c = 0; c < I; c++) {
          for (let k = 0; k < rank; k++) wantBb[c * K + i * r4 + k] = g.b[c * rank + k];
        }
      }
      assertClose(gat, wantAt, { atol: 1e-6, rtol: 1e-6 });
      assertClose(gbb, wantBb, { atol: 1e-6, rtol: 1e-6 });

      // The update in groups of two noises: the second group holds noise 2, then zero columns
      // where a noise 3 would be (over whatever the first group left there).
      const groupTable = createFactorTable(
        gpu,
        "groups",
        [0, 2].map((noise0) => ({
          rank,
          tensor: ids.b,
          row0: 0,
          rows: I,
          rowStride: 2 * r4,
          noiseStride: r4,
          kStride: 1,
          scaled: false,
          multiplier: 1,
          noise0,
          span: 2,
        })),
      );
      const grouped = gpu.createBuffer("grouped", I * 2 * r4 * 4, "activations");
      const groupStep = (index: number) =>
        lowRankFactorStep(gpu, {
          label: `group${index}`,
          table: groupTable,
          index,
          params: update,
          out: grouped,
          mode: "update",
          noises: n,
        });
      await submitSteps(gpu, [groupStep(0)]);
      const first = await gpu.readF32(grouped, I * 2 * r4);
      await submitSteps(gpu, [groupStep(1)]);
      const second = await gpu.readF32(grouped, I * 2 * r4);
      const wantFirst = new Float64Array(I * 2 * r4), wantSecond = new Float64Array(I * 2 * r4);
      for (let c = 0; c < I; c++) {
        for (let k = 0; k < rank; k++) {
          for (const i of [0, 1]) wantFirst[c * 2 * r4 + i * r4 + k] = twin(i).b[c * rank + k];
          wantSecond[c * 2 * r4 + k] = twin(2).b[c * rank + k];
        }
      }
      assertClose(first, wantFirst, { atol: 1e-6, rtol: 1e-6 });
      assertClose(second, wantSecond, { atol: 1e-6, rtol: 1e-6 });
    }),
);

for (const antithetic of [false, true]) {
  testBackends(
    `one low-rank iteration equals the float64 reference on θ + σ·A·Bᵀ/√r (antithetic ${antithetic})`,
    async (backend) => {
      const out = await tempDir();
      // Rank 3 (padded to 4 on the GPU); group multipliers: attention σ halved, MLP α doubled,
      // layer 1 σ ×0.5, and the norms frozen in σ (their full-rank noise still moves them by α).
      const groups =
        "{ attention: { sigma: 0.5 }, mlp: { alpha: 2 }, norms: { sigma: 0 }, layers: [{ from: 1, to: 1, sigma: 0.5 }] }";
      const rank = 3;
      const { resolved } = await train(
        pipelineYaml({ iterations: 1, antithetic, groups, rank }),
        `${out}/run`,
        { backend },
      );
      const spec = resolved.spec, config = resolved.config;
      const N = 4, sigma = 0.02, alpha = 0.05;
      const theta0 = new Map(
        [...randomInit(config, { seed: spec.seed })].map((t) => [t.name, t.data]),
      );
      const { tokens } = tokenizeSamples(resolved.texts, resolved.tokenizer, { maxLen: 24 });
      const split = splitHoldout(tokens.length, { seed: spec.seed, holdout: 5 });
      const indices = subsetSamples(split.train, { seed: spec.seed, iteration: 0, size: 6 });
      const batches = iterationBatches(tokens, indices, { microBatch: 4, padId: 0 });
      const specs = qwen3TensorSpecs(config);
      const groupsOf = (n: string) => groupMultipliers(spec.perturb.groups as never, n);
      // A member's unscaled perturbation of tensor `id`: A·Bᵀ/√r for a matrix, ε for a vector.
      const delta = (member: number, id: number): Float64Array => {
        const shape = specs[id].shape;
        if (shape.length === 2) {
          const [rows, cols] = shape;
          const f = lowRankFactors(spec.seed, {
            iteration: 0,
            member,
            tensorId: id,
            rows,
            cols,
            rank,
          });
          return lowRankProduct(f.a, f.b, { rows, cols, rank });
        }
        return Float64Array.from(gaussianNoise(spec.seed, 0, member, id, shape[0]));
      };
      const F: number[] = [];
      for (let j = 0; j < N; j++) {
        const m = noiseMember(j, N, antithetic);
        const thetaJ = new Map(specs.map(({ name }, id) => {
          const d = delta(m.index, id), base = theta0.get(name)!;
          const s = m.sign * sigma * groupsOf(name).sigma;
          return [name, Float32Array.from(base, (v, e) => v + s * d[e])];
        }));
        const r = batches.flatMap((b) => referenceScore(config, thetaJ, b).perSample);
        F.push(r.reduce((a, b) => a + b, 0) / r.length);
      }
      const line = JSON.parse((await Deno.readTextFile(`${out}/run/metrics.jsonl`)).split("\n")[0]);
      assertClose([line.fitness_mean, line.fitness_max, line.fitness_min], [
        F.reduce((a, b) => a + b, 0) / N,
        Math.max(...F),
        Math.min(...F),
      ], { atol: 0, rtol: 2e-5 });
      const c = updateCoefficients(zscoreShape(F), { alpha, sigma, population: N });
      const got = await readWeights(`${out}/run/final`);
      for (const [id, { name }] of specs.entries()) {
        const want = Float64Array.from(theta0.get(name)!);
        for (let j = 0; j < N; j++) {
          const m = noiseMember(j, N, antithetic), d = delta(m.index, id);
          const k = c[j] * m.sign * groupsOf(name).alpha;
          for (let e = 0; e < want.length; e++) want[e] += k * d[e];
        }
        assertClose(got.get(name)!, want, { atol: 2e-5, rtol: 1e-5 });
      }
    },
  );
}

testBackends("low-rank runs: same seed, same bytes; another rank, other bytes", async (backend) => {
  const out = await tempDir();
  const yaml = pipelineYaml({ iterations: 3, antithetic: true, rank: 2 });
  await train(yaml, `${out}/a`, { backend });
  await train(yaml, `${out}/b`, { backend });
  const a = await Deno.readFile(`${out}/a/final/model.safetensors`);
  const b = await Deno.readFile(`${out}/b/final/model.safetensors`);
  assertEquals(a.length, b.length);
  assert(
    a.every((x, i) => x === b[i]),
    "two low-rank runs with one seed must give identical bytes",
  );
  assertEquals(
    await Deno.readTextFile(`${out}/a/metrics.jsonl`).then((t) =>
      t.trim().split("\n").map((l) => JSON.parse(l).fitness_mean)
    ),
    await Deno.readTextFile(`${out}/b/metrics.jsonl`).then((t) =>
      t.trim().split("\n").map((l) => JSON.parse(l).fitness_mean)
    ),
  );
  await train(pipelineYaml({ iterations: 3, antithetic: true, rank: 1 }), `${out}/c`, { backend });
  const c = await Deno.readFile(`${out}/c/final/model.safetensors`);
  assert(c.some((x, i) => x !== a[i]), "another rank must change the weights");
});

Deno.test("a bad rank is a file:line:col error that says what to use", async () => {
  const micro = maxLowRank(getPreset("micro"));
  assertEquals(micro, 64); // k_proj/v_proj: 2 kv heads × 32 = 64 outputs
  for (
    const [rank, parts] of [
      [0, ["perturb.rank", "t.yaml:8:"]],
      [-2, ["perturb.rank", "t.yaml:8:"]],
      [1.5, ["perturb.rank", "t.yaml:8:"]],
      [micro + 1, ["t.yaml:8:", "perturb.rank", `rank ${micro + 1}`, `1 to ${micro}`]],
    ] as const
  ) {
    await assertUserError(async () => {
      const loaded = loadPipelineText(pipelineYaml({ rank }), { file: "t.yaml" });
      await resolvePipeline(loaded);
    }, ...parts);
  }
  // The largest rank the model admits runs.
  const loaded = loadPipelineText(pipelineYaml({ rank: micro }), { file: "t.yaml" });
  const { config } = await resolvePipeline(loaded);
  const plan = await compile(loaded.spec, config);
  assert(plan.bytes.total > 0);
});

testBackends(
  "low-rank plan: bytes equal the real allocations, no perturbed copy of the matrices",
  async (backend) => {
    const yaml = pipelineYaml({ rank: 3 });
    const loaded = loadPipelineText(yaml, { file: "t.yaml" });
    const { config } = await resolvePipeline(loaded);
    const gauss = loadPipelineText(
      yaml.replace("type: lowrank, rank: 3,", "type: gaussian, scratch: copy,"),
      {
        file: "g.yaml",
      },
    );
    await withDevice(backend, {}, async (gpu) => {
      const planned = await compile(loaded.spec, config, {
        target: { backend: gpu.backend, name: gpu.name, limits: gpu.limits },
      });
      const real = await compile(loaded.spec, config, { device: gpu });
      assertEquals(real.bytes, planned.bytes);
      assertEquals(
        real.buffers.map((b) => [b.name, b.bytes]),
        planned.buffers.map((b) => [b.name, b.bytes]),
      );
      assertEquals(gpu.memory.peak, planned.bytes.total);
      assertEquals(gpu.memory.live, 0);
      // Scratch: the perturbed vectors plus each matrix's a (O, r4) and Bᵀ (r4, I), nothing else.
      const specs = qwen3TensorSpecs(config), r4 = paddedRank(3);
      const align = (n: number) => Math.max(16, Math.ceil(n / 16) * 16);
      const want = specs.reduce(
        (a, s) =>
          a +
          (s.shape.length === 2
            ? align(4 * s.shape[0] * r4) + align(4 * r4 * s.shape[1])
            : align(4 * s.shape[0])),
        0,
      );
      assertEquals(planned.bytes.scratch, want);
      const full = await compile(gauss.spec, config);
      assertEquals(full.bytes.weights, planned.bytes.weights);
      assert(
        planned.bytes.scratch < full.bytes.scratch / 4,
        `low-rank scratch ${planned.bytes.scratch} B against the full copy's ${full.bytes.scratch}`,
      );
      // Steps: the perturb stage writes factors and vectors; the update is per-matrix matmuls.
      const kernels = JSON.stringify(planned.iteration);
      for (const k of ["lowrank_factors", "lowrank_embed", "lowrank_update."]) {
        assert(kernels.includes(k), `${k} missing from the plan`);
      }
    });
  },
);

testBackends(
  "low-rank engine: untied head with biases, sharded θ, equals the float64 reference",
  async (backend) => {
    const { EsEngine } = await import("../pipeline/engine.ts");
    const { packBatches } = await import("../pipeline/data.ts");
    const { stageType } = await import("../pipeline/spec.ts");
    const { noiseCoefficients } = await import("../pipeline/es.ts");
    // Untied lm_head, q/k/v biases (vectors with full-rank noise), rank 5 (padded to 8).
    const config = { ...getPreset("micro"), tieWordEmbeddings: false, attentionBias: true };
    const rank = 5, N = 4, seed = 9, sigma = 0.03, specs = qwen3TensorSpecs(config);
    const theta0 = new Map([...randomInit(config, { seed })].map((t) => [t.name, t.data]));
    let s = 3;
    const rand = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) % 256;
    const batch = {
      inputIds: Array.from({ length: 3 }, () => Array.from({ length: 10 }, rand)),
      attentionMask: Array.from(
        { length: 3 },
        (_, r) => Array.from({ length: 10 }, (_, t) => (t < 10 - 2 * r ? 1 : 0)),
      ),
    };
    const fitness = stageType("fitness", "log_likelihood")!
      .impl as import("../pipeline/stages/types.ts").FitnessImpl;
    const mult = (n: string) => ({
      sigma: n.includes("v_proj") ? 0 : 1,
      alpha: n.includes("up") ? 0 : 1,
    });
    const run = (shardBytes?: number) =>
      withDevice(backend, { shardBytes }, async (gpu) => {
        const engine = await EsEngine.create(gpu, {
          config,
          tensors: randomInit(config, { seed }),
          seed,
          population: N,
          antithetic: true,
          maxSamples: 3,
          microBatch: 3,
          maxLen: 10,
          fitness,
          multipliers: mult,
          lowRank: { rank },
        });
        if (shardBytes) assert(engine.theta.get("lm_head.weight")!.shards.length > 1);
        const r = await engine.evaluate(packBatches([batch]), {
          iteration: 2,
          population: memberRecords(engine.options.population, engine.options.antithetic, sigma),
          heldOut: false,
        });
        const d = noiseCoefficients([0.01, -0.02, 0.005, 0.015], true);
        engine.update({ iteration: 2, coefficients: d });
        const w = new Map<string, Float32Array>();
        for await (const t of engine.weights()) w.set(t.name, t.data);
        return { fitness: r.fitness, weights: w, d };
      });
    const plain = await run(), sharded = await run(4096);
    assertClose(sharded.fitness, plain.fitness, { atol: 0, rtol: 1e-6 });
    const delta = (member: number, id: number): Float64Array => {
      const shape = specs[id].shape;
      if (shape.length === 2) {
        const [rows, cols] = shape;
        const f = lowRankFactors(seed, { iteration: 2, member, tensorId: id, rows, cols, rank });
        return lowRankProduct(f.a, f.b, { rows, cols, rank });
      }
      return Float64Array.from(gaussianNoise(seed, 2, member, id, shape[0]));
    };
    const want: number[] = [];
    for (let j = 0; j < N; j++) {
      const m = noiseMember(j, N, true);
      const thetaJ = new Map(specs.map(({ name }, id) => {
        const d = delta(m.index, id), sc = m.sign * sigma * mult(name).sigma;
        return [name, Float32Array.from(theta0.get(name)!, (v, e) => v + sc * d[e])];
      }));
      const r = referenceScore(config, thetaJ, batch).perSample;
      want.push(r.reduce((a, b) => a + b, 0) / r.length);
    }
    assertClose(plain.fitness, want, { atol: 0, rtol: 2e-5 });
    for (const [id, { name }] of specs.entries()) {
      const w = Float64Array.from(theta0.get(name)!);
      plain.d.forEach((di, i) => {
        const d = delta(i, id), k = di * mult(name).alpha;
        for (let e = 0; e < w.length; e++) w[e] += k * d[e];
      });
      assertClose(plain.weights.get(name)!, w, { atol: 1e-6, rtol: 1e-5 });
      assertClose(sharded.weights.get(name)!, plain.weights.get(name)!, { atol: 1e-7, rtol: 1e-6 });
    }
  },
);
