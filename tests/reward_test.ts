// The reward fitness in a run (pipeline/reward_run.ts, pipeline/stages/reward.ts) on the Caesar
// task's pretrained model: metrics lines carry reward_mean/max/min, eval_reward and samples;
// the members' fitness is the same whether their weights are formed in chunks, whole, or two
// members at once; a resume continues to the same bytes; sampling is seeded; a custom reward
// registered as a fitness stage (examples/custom_reward.ts) drives the run; prompts-file faults
// and a distributed run are one line.
import {
  assert,
  assertEquals,
  assertUserError,
  runCli,
  testBackends,
  withTempDir,
} from "./helpers.ts";
import { readWeights, train } from "./run_helpers.ts";
import { parseMetrics } from "../pipeline/run_dir.ts";
import type { Backend } from "../kernels/device.ts";
import { acquireDevice } from "../kernels/backend.ts";
import { loadPipelineText } from "../pipeline/load.ts";
import { resolvePipeline } from "../pipeline/resolve.ts";
import { runSetup } from "../pipeline/run.ts";
import { EsEngine } from "../pipeline/engine.ts";
import { rewardRun } from "../pipeline/reward_run.ts";
import { VOWEL_REWARD_TYPE } from "../examples/custom_reward.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const DATA = `${ROOT}data/caesar`;

/** A few-iteration reward pipeline on the Caesar prompts (absolute paths). */
function pipeline(o: {
  iterations?: number;
  population?: number;
  scratch?: "chunks" | "copy";
  memberBatch?: number;
  fitness?: string;
  dataset?: string;
  perturb?: string;
  storage?: "f32" | "bf16";
} = {}): string {
  return [
    "name: reward-test",
    "seed: 3",
    `iterations: ${o.iterations ?? 3}`,
    o.dataset ??
      `dataset: { type: prompts, path: ${DATA}/prompts.jsonl, samples_per_iteration: 24, holdout: 8 }`,
    "tokenizer: { type: bytes }",
    `model: { type: qwen3, preset: micro, init: ${DATA}/pretrained, storage: ${
      o.storage ?? "f32"
    } }`,
    o.perturb ??
      `perturb: { type: gaussian, population: ${
          o.population ?? 4
        }, sigma: 0.02, antithetic: true, ` +
        `scratch: ${o.scratch ?? "copy"} }`,
    o.fitness ??
      "fitness: { type: reward, reward: { type: exact_match, field: answer }, max_new_tokens: 4, " +
        `stop: ["."], micro_batch: 16, max_len: 8, member_batch: ${
          o.memberBatch ?? 1
        }, eval_samples: 3 }`,
    "shape: { type: rank }",
    "update: { type: es, alpha: 0.05 }",
    "output: { checkpoint_every: 0, eval_every: 2, status: { port: 0 } }",
  ].join("\n");
}

async function lines(dir: string) {
  return parseMetrics(await Deno.readTextFile(`${dir}/metrics.jsonl`)) as (
    ReturnType<typeof parseMetrics>[number] & Record<string, unknown>
  )[];
}

testBackends("a reward run records rewards, θ's held-out reward and samples", async (backend) => {
  await withTempDir(async (dir) => {
    await train(pipeline(), `${dir}/run`, { backend });
    const ls = await lines(`${dir}/run`);
    assertEquals(ls.map((l) => l.iter), [0, 1, 2]);
    for (const l of ls) {
      const r = [l.reward_mean, l.reward_max, l.reward_min] as number[];
      assert(r.every((x) => x >= 0 && x <= 1), JSON.stringify(l));
      assertEquals(l.reward_mean, l.fitness_mean);
      assertEquals([l.reward_max, l.reward_min], [l.fitness_max, l.fitness_min]);
      assert((l.tokens_per_s as number) > 0);
      assertEquals(l.eval_loss, undefined);
    }
    // Evaluations at 0, 2 (eval_every) and the last: θ's reward on the 8 held-out prompts.
    for (const l of [ls[0], ls[2]]) {
      const e = l.eval_reward as number;
      assert(e >= 0 && e <= 1 && Number.isInteger(e * 8), `eval_reward ${e}`);
      const samples = l.samples as { prompt: string; completion: string; reward: number }[];
      assertEquals(samples.length, 3);
      for (const s of samples) {
        assert(/^[a-h]{3}=$/.test(s.prompt), s.prompt);
        assert(!s.completion.includes("."), `the stop string is cut: ${s.completion}`);
        assert(s.reward === 0 || s.reward === 1);
      }
    }
    assertEquals(ls[1].samples, undefined);
  });
});

testBackends("members score the same with chunks, a whole copy, two at once", async (backend) => {
  const fitness: Record<string, number[]> = {};
  for (
    const [name, o] of [
      ["copy", { scratch: "copy" }],
      ["chunks", { scratch: "chunks" }],
      ["chunks, member batch 2", { scratch: "chunks", memberBatch: 2 }],
    ] as const
  ) {
    const loaded = loadPipelineText(pipeline({ ...o, population: 6 }), { file: `${ROOT}r.yaml` });
    const resolved = await resolvePipeline(loaded);
    const device = await acquireDevice({ backend });
    try {
      const setup = runSetup(resolved);
      const engine = await EsEngine.create(device, setup.engineOptions(resolved.model.tensors()));
      assertEquals(engine.memberBatch, "memberBatch" in o ? 2 : 1);
      const reward = rewardRun(resolved, setup.split)!;
      const ask = setup.strategy.ask(0);
      const res = await reward.evaluate({
        engine,
        iteration: 0,
        population: ask.members,
        indices: setup.iterationInputs(0).indices,
        heldOut: false,
      });
      fitness[name] = res.fitness;
      reward.destroy();
      engine.destroy();
    } finally {
      device.destroy();
    }
  }
  assertEquals(fitness["chunks"], fitness["copy"]);
  assertEquals(fitness["chunks, member batch 2"], fitness["copy"]);
  assert(new Set(fitness.copy).size > 1, `every member scored the same: ${fitness.copy}`);
});

Deno.test("a reward run resumed continues to the same bytes", async () => {
  await withTempDir(async (dir) => {
    const backend: Backend = "cpu";
    await train(pipeline({ iterations: 4 }), `${dir}/straight`, { backend });
    await train(pipeline({ iterations: 2 }), `${dir}/resumed`, { backend });
    await train(pipeline({ iterations: 4 }), `${dir}/resumed`, { backend, resume: true });
    const a = await Deno.readTextFile(`${dir}/straight/metrics.jsonl`);
    const b = await Deno.readTextFile(`${dir}/resumed/metrics.jsonl`);
    // Timings aside, and the evaluation a run makes at its own last iteration (the first part
    // of the resumed run ends at 2; the straight one does not evaluate there).
    const strip = (t: string) =>
      parseMetrics(t).map((l) => {
        const { seconds: _, tokens_per_s: __, eval_reward: _e, samples: _s, ...rest } = l as
          & typeof l
          & Record<string, unknown>;
        return rest;
      });
    assertEquals(strip(b), strip(a));
    const [x, y] = [
      await readWeights(`${dir}/straight/final`),
      await readWeights(`${dir}/resumed/final`),
    ];
    for (const [name, t] of x) assertEquals(Array.from(y.get(name)!), Array.from(t), name);
  });
});

Deno.test("sampled generation is seeded: the same run twice gives the same rewards", async () => {
  await withTempDir(async (dir) => {
    const fitness =
      "fitness: { type: reward, reward: { type: regex, pattern: '^[a-h]{3}$' }, max_new_tokens: 4, " +
      'stop: ["."], micro_batch: 16, max_len: 8, temperature: 1.5, top_k: 5 }';
    await train(pipeline({ iterations: 2, fitness }), `${dir}/a`, { backend: "cpu" });
    await train(pipeline({ iterations: 2, fitness }), `${dir}/b`, { backend: "cpu" });
    const [a, b] = [await lines(`${dir}/a`), await lines(`${dir}/b`)];
    assertEquals(a.map((l) => l.fitness_mean), b.map((l) => l.fitness_mean));
    assertEquals(a[0].samples, b[0].samples);
  });
});

Deno.test("a custom reward registered as a fitness stage (examples/custom_reward.ts)", async () => {
  await withTempDir(async (dir) => {
    const fitness = `fitness: { type: ${VOWEL_REWARD_TYPE}, max_new_tokens: 4, stop: ["."], ` +
      "micro_batch: 16, max_len: 8, vowel: e }";
    await train(pipeline({ iterations: 2, fitness }), `${dir}/run`, { backend: "cpu" });
    const ls = await lines(`${dir}/run`);
    for (const s of ls[0].samples as { completion: string; reward: number }[]) {
      const want = [...s.completion].filter((c) => c === "e").length /
        Math.max(1, s.completion.length);
      assertEquals(s.reward, want, s.completion);
    }
    assert(typeof ls[1].reward_mean === "number");
  });
});

Deno.test("prompts-file faults and a distributed reward run are one line", async () => {
  await withTempDir(async (dir) => {
    const file = `${dir}/p.jsonl`;
    const check = async (text: string, ...parts: string[]) => {
      await Deno.writeTextFile(file, text);
      const yaml = pipeline({
        dataset: `dataset: { type: prompts, path: ${file}, samples_per_iteration: 1, holdout: 0 }`,
      });
      await assertUserError(
        async () => await resolvePipeline(loadPipelineText(yaml, { file: `${dir}/r.yaml` })),
        ...parts,
      );
    };
    await check('{"prompt": "abc="}\nnot json\n', "p.jsonl:2", "not valid JSON");
    await check('{"question": "abc="}\n', "p.jsonl:1", '"prompt"', "prompt_field");
    await check("\n\n", "holds no prompts");
    await Deno.writeTextFile(`${dir}/r.yaml`, pipeline());
    const r = await runCli([
      "tools/train.ts",
      `${dir}/r.yaml`,
      "--redis",
      "redis://127.0.0.1:1",
      "--no-status",
      "--backend",
      "cpu",
    ]);
    assertEquals(r.code, 2, r.stderr);
    assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert(r.stderr.includes("does not run distributed"), r.stderr);
  });
});

Deno.test("the planned generation memory is what the run's decoder allocates", async () => {
  const { generationPlan } = await import("../pipeline/reward_run.ts");
  const { planDevice } = await import("../kernels/device.ts");
  const { CPU_LIMITS } = await import("../kernels/cpu/limits.ts");
  const loaded = loadPipelineText(pipeline({ memberBatch: 2, scratch: "chunks" }), {
    file: `${ROOT}r.yaml`,
  });
  const planned = await generationPlan(loaded.spec, (await resolvePipeline(loaded)).config, {
    device: planDevice({ backend: "cpu", name: "plan", limits: CPU_LIMITS }),
  });
  assert(planned !== null);
  // 2 members × 16 prompts; 8 + 4 − 1 slots; micro: 2 layers, 2 kv heads, head_dim 32.
  assertEquals([planned.sequences, planned.slots], [32, 11]);
  assertEquals(planned.cacheBytes, 2 * 2 * 32 * 11 * 2 * 32 * 4);
  // A run's own decoder, made by its first evaluation, allocates exactly that.
  const resolved = await resolvePipeline(loaded);
  const device = await acquireDevice({ backend: "cpu" });
  try {
    const setup = runSetup(resolved);
    const engine = await EsEngine.create(device, setup.engineOptions(resolved.model.tensors()));
    const reward = rewardRun(resolved, setup.split)!;
    await reward.evaluate({
      engine,
      iteration: 0,
      population: setup.strategy.ask(0).members,
      indices: setup.iterationInputs(0).indices,
      heldOut: false,
    });
    const bytes = (prefix: string) =>
      device.allocations().filter((a) => a.label.startsWith(prefix))
        .reduce((s, a) => s + a.bytes, 0);
    assertEquals(bytes("cache."), planned.cacheBytes);
    assertEquals(bytes("decode."), planned.workspaceBytes);
    reward.destroy();
    engine.destroy();
  } finally {
    device.destroy();
  }
  await withTempDir(async () => {
    const r = await runCli(["tools/plan.ts", `${ROOT}configs/pipelines/reward-tiny.yaml`]);
    assertEquals(r.code, 0, r.stderr);
    assert(/KV cache\s+704\.0 KiB/.test(r.stdout), r.stdout);
    assert(r.stdout.includes("total device memory with generation"), r.stdout);
  });
});

testBackends("low-rank members and bf16 θ generate through the same hooks", async (backend) => {
  await withTempDir(async (dir) => {
    for (
      const [name, o] of [
        ["lowrank", {
          perturb:
            "perturb: { type: lowrank, rank: 2, population: 4, sigma: 0.02, antithetic: true }",
          memberBatch: 2,
        }],
        ["bf16", { storage: "bf16" as const, scratch: "chunks" as const }],
      ] as const
    ) {
      await train(pipeline({ iterations: 2, ...o }), `${dir}/${name}`, { backend });
      const ls = await lines(`${dir}/${name}`);
      assertEquals(ls.length, 2, name);
      for (const l of ls) {
        const r = l.reward_mean as number;
        assert(r >= 0 && r <= 1 && l.fitness_mean === r, `${name}: ${JSON.stringify(l)}`);
      }
      assert(typeof ls[0].eval_reward === "number", name);
    }
  });
}, { backends: ["cpu"] });
