// ES training end to end, on both backends: one iteration against a float64 reference of the
// whole algorithm, byte-identical reruns and resumes, the run output, a registered custom stage
// (its WGSL and its CPU twin), learning, and prefix caching.
import { memberRecords } from "../pipeline/es.ts";
import { readWeights, train } from "./run_helpers.ts";
import {
  assert,
  assertClose,
  assertEquals,
  runCli,
  tempDir,
  testBackends,
  withDevice,
} from "./helpers.ts";
import { gaussianNoise } from "../kernels/philox.ts";
import {
  iterationBatches,
  splitHoldout,
  subsetSamples,
  tokenizeSamples,
} from "../pipeline/data.ts";
import { noiseMember, updateCoefficients, zscoreShape } from "../pipeline/es.ts";
import { groupMultipliers } from "../pipeline/stages/perturb.ts";
import { qwen3TensorSpecs, randomInit } from "../model/weights.ts";
import { referenceScore } from "../model/reference.ts";
import { registerStage } from "../pipeline/spec.ts";
import { pairSnr } from "../pipeline/strategy.ts";
import { z } from "zod";
import { dispatch, wgslConsts } from "../kernels/program.ts";
import { fromBf16, toBf16 } from "../kernels/tensor.ts";
import { sumSquaresReference } from "../kernels/sum_squares.ts";
import { openCheckpoint } from "../model/checkpoint.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const CORPUS = `${ROOT}data/pride_and_prejudice.txt`;

/** A small pipeline: micro preset, a few samples, short lines. */
function pipelineYaml(o: {
  iterations?: number;
  population?: number;
  antithetic?: boolean;
  shape?: string;
  fitness?: string;
  groups?: string;
  samples?: number;
  microBatch?: number;
  storage?: "f32" | "bf16";
} = {}): string {
  return `
name: t
seed: 77
iterations: ${o.iterations ?? 2}
dataset: { type: text_lines, path: ${CORPUS}, max_lines: 120, samples_per_iteration: ${
    o.samples ?? 6
  }, holdout: 5 }
tokenizer: { type: bytes }
model: { type: qwen3, preset: micro, storage: ${o.storage ?? "f32"} }
perturb: { type: gaussian, population: ${o.population ?? 4}, sigma: 0.02, antithetic: ${
    o.antithetic ?? false
  }${o.groups ? `, groups: ${o.groups}` : ""} }
fitness: { type: ${o.fitness ?? "log_likelihood"}, micro_batch: ${o.microBatch ?? 4}, max_len: 24 }
shape: { type: ${o.shape ?? "zscore"} }
update: { type: es, alpha: 0.05 }
output: { checkpoint_every: 1, eval_every: 1, status: { port: 0 } }
`;
}

async function metrics(dir: string) {
  return (await Deno.readTextFile(`${dir}/metrics.jsonl`)).trim().split("\n").map((l) =>
    JSON.parse(l)
  );
}

for (
  const [antithetic, storage] of [[false, "f32"], [true, "f32"], [true, "bf16"]] as const
) {
  testBackends(
    `one ES iteration equals the float64 reference of EA4LLM (antithetic ${antithetic}, θ in ${storage})`,
    async (backend) => {
      const out = await tempDir();
      // Group multipliers on: the attention σ halved, the MLP α doubled, layer 1 σ ×0.5.
      const groups =
        "{ attention: { sigma: 0.5 }, mlp: { alpha: 2 }, layers: [{ from: 1, to: 1, sigma: 0.5 }] }";
      const yaml = pipelineYaml({ iterations: 1, antithetic, groups, storage });
      const { resolved } = await train(yaml, `${out}/run`, { backend });
      const spec = resolved.spec, config = resolved.config;
      const N = 4, sigma = 0.02, alpha = 0.05;
      // The reference, from the pieces' definitions: θ_0 (rounded to bf16 when stored so), the
      // subset of iteration 0, each member's exact perturbation, F_j from the float64 forward,
      // z-score shaping, the update.
      const bf16 = storage === "bf16";
      const theta0 = new Map(
        [...randomInit(config, { seed: spec.seed })].map((
          t,
        ) => [t.name, bf16 ? fromBf16(toBf16(t.data)) : t.data]),
      );
      const { tokens } = tokenizeSamples(resolved.texts, resolved.tokenizer, { maxLen: 24 });
      const split = splitHoldout(tokens.length, { seed: spec.seed, holdout: 5 });
      const indices = subsetSamples(split.train, { seed: spec.seed, iteration: 0, size: 6 });
      const batches = iterationBatches(tokens, indices, { microBatch: 4, padId: 0 });
      const names = qwen3TensorSpecs(config).map((s) => s.name);
      const groupsOf = (n: string) => groupMultipliers(spec.perturb.groups as never, n);
      const noise = (member: number, id: number, n: string) =>
        gaussianNoise(spec.seed, 0, member, id, theta0.get(n)!.length);
      const F: number[] = [];
      for (let j = 0; j < N; j++) {
        const m = noiseMember(j, N, antithetic);
        const thetaJ = new Map(names.map((n, id) => {
          const eps = noise(m.index, id, n),
            base = theta0.get(n)!,
            s = m.sign * sigma * groupsOf(n).sigma;
          return [n, Float32Array.from(base, (v, e) => v + s * eps[e])];
        }));
        const r = batches.flatMap((b) => referenceScore(config, thetaJ, b).perSample);
        F.push(r.reduce((a, b) => a + b, 0) / r.length);
      }
      const lines = await metrics(`${out}/run`);
      assertClose([lines[0].fitness_mean, lines[0].fitness_max, lines[0].fitness_min], [
        F.reduce((a, b) => a + b, 0) / N,
        Math.max(...F),
        Math.min(...F),
      ], { atol: 0, rtol: 2e-5 });
      const c = updateCoefficients(zscoreShape(F), { alpha, sigma, population: N });
      // The step's diagnostics in the line, from the reference: the population std of F, and
      // sqrt(Σ_g m_α,g²·numel_g · Σ_i d_i²) with the MLP's α doubled; pairs' SNR with pairs.
      const d = new Float64Array(antithetic ? N / 2 : N);
      c.forEach((cj, j) => {
        const m = noiseMember(j, N, antithetic);
        d[m.index] += m.sign * cj;
      });
      const alphaMass = names.reduce(
        (s, n) => s + groupsOf(n).alpha ** 2 * theta0.get(n)!.length,
        0,
      );
      const meanF = F.reduce((a, b) => a + b, 0) / N;
      const stdF = Math.sqrt(F.reduce((a, f) => a + (f - meanF) ** 2, 0) / N);
      assertClose([lines[0].fitness_std], [stdF], { atol: 0, rtol: 1e-2 });
      assertEquals(lines[0].fitness_spread, lines[0].fitness_max - lines[0].fitness_min);
      assertClose([lines[0].update_norm_expected], [
        Math.sqrt(alphaMass * d.reduce((a, x) => a + x * x, 0)),
      ], { atol: 0, rtol: 1e-2 });
      // N = 4 antithetic is two pairs: the SNR is defined; without pairs it is absent.
      if (antithetic) {
        assertClose([lines[0].pair_snr], [pairSnr(F)!], { atol: 0, rtol: 5e-2 });
      } else assertEquals(lines[0].pair_snr, undefined);
      // ‖θ_0‖ measured on the device (kernels/sum_squares.ts), θ_0 as stored (bf16 rounded).
      const thetaNorm = Math.sqrt(sumSquaresReference([...theta0.values()]));
      assertClose([lines[0].update_ratio_expected], [
        lines[0].update_norm_expected! / thetaNorm,
      ], { atol: 0, rtol: 1e-5 });
      const got = await readWeights(`${out}/run/final`);
      for (const [id, n] of names.entries()) {
        const want = Float64Array.from(theta0.get(n)!);
        for (let j = 0; j < N; j++) {
          const m = noiseMember(j, N, antithetic), eps = noise(m.index, id, n);
          const k = c[j] * m.sign * groupsOf(n).alpha;
          for (let e = 0; e < want.length; e++) want[e] += k * eps[e];
        }
        // The update moves elements by ~1e-2; f32 fitness differences reach w through the
        // z-score, so allow a small relative error of the step. bf16 storage rounds the result
        // stochastically: within one bf16 ulp (at most 2^-7 of the value).
        assertClose(got.get(n)!, want, { atol: 2e-5, rtol: bf16 ? 2 ** -7 : 1e-5 });
      }
      const ckpt = await openCheckpoint(`${out}/run/final`);
      for (const [name, entry] of ckpt.tensors) {
        assertEquals(entry.dtype, bf16 ? "BF16" : "F32", name);
      }
      ckpt.close();
    },
  );
}

for (const storage of ["f32", "bf16"] as const) {
  testBackends(
    `same seed, same bytes; stopped and resumed, same bytes as never stopped (θ in ${storage})`,
    async (backend) => {
      const out = await tempDir();
      const yaml = pipelineYaml({
        iterations: 4,
        population: 4,
        antithetic: true,
        shape: "rank",
        storage,
      });
      // In this process, then through the CLI on the same backend: a run is bit-exact only within
      // one backend (they agree to ~1e-5).
      await train(yaml, `${out}/a`, { backend });
      await train(yaml, `${out}/b`, { backend });
      const a = await Deno.readFile(`${out}/a/final/model.safetensors`);
      const b = await Deno.readFile(`${out}/b/final/model.safetensors`);
      assertEquals(a.length, b.length);
      assert(a.every((x, i) => x === b[i]), "two runs with one seed must give identical bytes");

      // Stop after 2 (the CLI's --iterations is the total), then resume to 4.
      const file = `${out}/p.yaml`;
      await Deno.writeTextFile(file, yaml);
      let r = await runCli([
        "tools/train.ts",
        file,
        "--iterations",
        "2",
        "--out",
        `${out}/c`,
        "--backend",
        backend,
        "--quiet",
      ]);
      assertEquals(r.code, 0, r.stderr);
      const stopped = JSON.parse(await Deno.readTextFile(`${out}/c/final/state.json`));
      assertEquals([stopped.iteration, stopped.backend], [2, backend]);
      r = await runCli([
        "tools/train.ts",
        file,
        "--resume",
        `${out}/c`,
        "--iterations",
        "4",
        "--backend",
        backend,
        "--quiet",
      ]);
      assertEquals(r.code, 0, r.stderr);
      const c = await Deno.readFile(`${out}/c/final/model.safetensors`);
      assert(a.every((x, i) => x === c[i]), "a resumed run must reach the same bytes");
      const ma = await metrics(`${out}/a`), mc = await metrics(`${out}/c`);
      assertEquals(mc.map((l) => l.iter), [0, 1, 2, 3]);
      assertEquals(mc.map((l) => l.fitness_mean), ma.map((l) => l.fitness_mean));
      assertEquals(mc.map((l) => l.eval_loss), ma.map((l) => l.eval_loss));
      // A different seed gives different bytes (the test above can fail).
      r = await runCli([
        "tools/train.ts",
        file,
        "--iterations",
        "2",
        "--seed",
        "5",
        "--out",
        `${out}/d`,
        "--backend",
        backend,
        "--quiet",
      ]);
      assertEquals(r.code, 0, r.stderr);
      const d = await Deno.readFile(`${out}/d/final/model.safetensors`);
      assert(d.some((x, i) => x !== a[i]), "another seed must change the weights");
    },
  );
}

Deno.test("run output: metrics keys, checkpoints with state.json, final/ loads in eval", async () => {
  const out = await tempDir();
  await train(pipelineYaml({ iterations: 3 }), `${out}/r`);
  const lines = await metrics(`${out}/r`);
  assertEquals(lines.length, 3);
  for (const l of lines) {
    for (
      const k of [
        "iter",
        "fitness_mean",
        "fitness_max",
        "fitness_min",
        "sigma",
        "alpha",
        "seconds",
        "tokens_per_s",
        "fitness_std",
        "fitness_spread",
        "update_norm_expected",
      ]
    ) {
      assert(typeof l[k] === "number" && Number.isFinite(l[k]), `${k} in ${JSON.stringify(l)}`);
    }
    assert(l.fitness_min <= l.fitness_mean && l.fitness_mean <= l.fitness_max);
    assertEquals(l.fitness_spread, l.fitness_max - l.fitness_min);
    assert(l.fitness_std > 0 && l.fitness_std <= l.fitness_spread, JSON.stringify(l));
    assert(l.eval_loss > 0 && l.eval_loss < 8, `eval_loss ${l.eval_loss}`);
  }
  for (const dir of ["checkpoints/iter-1", "checkpoints/iter-2", "final"]) {
    const state = JSON.parse(await Deno.readTextFile(`${out}/r/${dir}/state.json`));
    assertEquals(state.iteration, dir === "final" ? 3 : Number(dir.split("-")[1]));
    assertEquals(state.seed, 77);
    const cfg = JSON.parse(await Deno.readTextFile(`${out}/r/${dir}/config.json`));
    assertEquals(cfg.model_type, "qwen3");
  }
  // No temp files are left behind by the atomic writes.
  for await (const e of Deno.readDir(`${out}/r`)) assert(!e.name.includes("tmp"), e.name);
  await Deno.writeTextFile(`${out}/a.txt`, "It is a truth universally acknowledged\n");
  const r = await runCli(["tools/eval.ts", "--model", `${out}/r/final`, "--text", `${out}/a.txt`]);
  assertEquals(r.code, 0, r.stderr);
  assert(JSON.parse(r.stdout).per_sample[0] < 0);
});

Deno.test("a run dir that holds a run is refused without --resume, and nothing is written", async () => {
  const out = await tempDir();
  const file = `${out}/p.yaml`;
  await Deno.writeTextFile(file, pipelineYaml({ iterations: 1 }));
  let r = await runCli(["tools/train.ts", file, "--out", `${out}/r`, "--quiet"]);
  assertEquals(r.code, 0, r.stderr);
  const before = await Deno.readTextFile(`${out}/r/metrics.jsonl`);
  r = await runCli(["tools/train.ts", file, "--out", `${out}/r`, "--quiet"]);
  assertEquals(r.code, 2);
  assert(/already holds a run/.test(r.stderr), r.stderr);
  assertEquals(await Deno.readTextFile(`${out}/r/metrics.jsonl`), before);
  r = await runCli(["tools/train.ts", file, "--resume", `${out}/nothing-here`, "--quiet"]);
  assertEquals(r.code, 2);
  assert(/no checkpoint/.test(r.stderr), r.stderr);
});

/**
 * fitness = 2·R: the built-in steps, then a user kernel doubling each sample's value, in WGSL
 * and as its CPU twin (a custom kernel the native library lacks runs through `cpu`).
 */
function registerDoubled(): void {
  registerStage({
    kind: "fitness",
    type: "doubled_log_likelihood",
    description: "2·R, a test of custom stages",
    schema: z.strictObject({
      type: z.literal("doubled_log_likelihood"),
      micro_batch: z.number().int().positive().default(16),
      max_len: z.number().int().positive().default(256),
    }),
    impl: {
      steps: (
        fwd: import("../model/forward.ts").Qwen3Forward,
        o: { batch: number; seqLen: number; weights: never },
      ) => {
        const code = wgslConsts({ B: o.batch }) + `
@group(0) @binding(0) var<storage, read_write> r: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u) { if (g.x < B) { r[g.x] = 2.0 * r[g.x]; } }`;
        return [
          ...fwd.fitnessSteps(o.batch, o.seqLen, o.weights),
          dispatch(fwd.device, {
            label: "double",
            kernel: "double",
            consts: { B: o.batch },
            bindings: [fwd.buffer("r")],
            workgroups: 1,
            wgsl: { label: "double", code: () => code },
            cpu: ([r]) => {
              for (let i = 0; i < o.batch; i++) {
                r.setFloat32(4 * i, 2 * r.getFloat32(4 * i, true), true);
              }
            },
          }),
        ];
      },
    },
  });
}
registerDoubled();

testBackends("a custom fitness registered from TypeScript runs from YAML", async (backend) => {
  const out = await tempDir();
  await train(pipelineYaml({ iterations: 1 }), `${out}/plain`, { backend });
  await train(
    pipelineYaml({ iterations: 1, fitness: "doubled_log_likelihood" }),
    `${out}/doubled`,
    { backend },
  );
  const [p] = await metrics(`${out}/plain`), [d] = await metrics(`${out}/doubled`);
  assertClose([d.fitness_mean], [2 * p.fitness_mean], { atol: 0, rtol: 1e-6 });
});

for (const storage of ["f32", "bf16"] as const) {
  testBackends(
    `it learns: 40 iterations of ES lower the held-out loss clearly (θ in ${storage})`,
    async (backend) => {
      const out = await tempDir();
      const yaml = `
name: learn
seed: 1
iterations: 40
dataset: { type: text_lines, path: ${CORPUS}, max_lines: 400, samples_per_iteration: 8, holdout: 16 }
tokenizer: { type: bytes }
model: { type: qwen3, preset: micro, storage: ${storage} }
perturb: { type: gaussian, population: 8, sigma: 0.01, antithetic: true }
fitness: { type: log_likelihood, micro_batch: 8, max_len: 32 }
shape: { type: rank }
update: { type: es, alpha: 0.05 }
output: { checkpoint_every: 0, eval_every: 10 }
`;
      await train(yaml, `${out}/r`, { backend });
      const evals = (await metrics(`${out}/r`)).filter((l) => l.eval_loss !== undefined).map((l) =>
        l.eval_loss
      );
      assertEquals(evals.length, 5, "held-out loss at 0, 10, 20, 30 and the last iteration");
      // Random init sits at ≈ ln 256 = 5.55 nats; 40 iterations move it by ~0.4-0.6 (three seeds).
      assert(Math.abs(evals[0] - Math.log(256)) < 0.1, `initial loss ${evals[0]}`);
      assert(
        evals[4] < evals[0] - 0.2,
        `held-out loss ${evals.join(" → ")} should fall by > 0.2 nats`,
      );
    },
  );
}

testBackends(
  "prefix caching: unperturbed leading layers are computed once, with the same fitness",
  async (backend) => {
    const { EsEngine, unperturbedPrefix } = await import("../pipeline/engine.ts");
    const { getPreset } = await import("../model/presets.ts");
    const { packBatches } = await import("../pipeline/data.ts");
    const { stageType } = await import("../pipeline/spec.ts");
    const config = { ...getPreset("micro"), numLayers: 3 };
    // Embedding and layer 0 frozen (σ multiplier 0): every member shares their output.
    const multipliers = (n: string) => ({
      sigma: n === "model.embed_tokens.weight" || n.startsWith("model.layers.0.") ? 0 : 1,
      alpha: 1,
    });
    assertEquals(unperturbedPrefix(config, multipliers), 1);
    assertEquals(unperturbedPrefix(config, () => ({ sigma: 1 })), 0);
    assertEquals(unperturbedPrefix(config, () => ({ sigma: 0 })), 3);
    let s = 9;
    const rand = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) % 256;
    const batches = [6, 3].map((rows) => ({
      inputIds: Array.from({ length: rows }, () => Array.from({ length: 12 }, rand)),
      attentionMask: Array.from(
        { length: rows },
        (_, r) => Array.from({ length: 12 }, (_, t) => (t < 12 - r ? 1 : 0)),
      ),
    }));
    const packed = packBatches(batches);
    const fitness = stageType("fitness", "log_likelihood")!
      .impl as import("../pipeline/stages/types.ts").FitnessImpl;
    const run = (prefixCache: boolean) =>
      withDevice(backend, {}, async (device) => {
        const engine = await EsEngine.create(device, {
          config,
          tensors: randomInit(config, { seed: 4 }),
          seed: 4,
          population: 6,
          antithetic: true,
          maxSamples: 9,
          microBatch: 6,
          maxLen: 12,
          fitness,
          multipliers,
          prefixCache,
        });
        assertEquals(engine.prefixLayers, prefixCache ? 1 : 0);
        const out = [];
        for (let t = 0; t < 2; t++) {
          const r = await engine.evaluate(packed, {
            iteration: t,
            population: memberRecords(engine.options.population, engine.options.antithetic, 0.05),
            heldOut: false,
          });
          out.push(...r.fitness);
          engine.update({ iteration: t, coefficients: r.fitness.slice(0, 3).map((f) => f * 1e-3) });
        }
        return out;
      });
    const cached = await run(true), uncached = await run(false);
    assertClose(cached, uncached, { atol: 0, rtol: 1e-6 });
    assert(
      new Set(cached).size > 1,
      "members must differ: the perturbed layers change the fitness",
    );
  },
);
