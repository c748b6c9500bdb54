// The Plan: flat data from the same code that allocates at run time. Its buffers and bytes
// equal what a real device of either backend allocates, and `deno task plan` prints it for every
// shipped pipeline.
import { assert, assertEquals, runCli, testBackends, withDevice } from "./helpers.ts";
import { compile, countDispatches } from "../pipeline/compile.ts";
import { loadPipelineFile } from "../pipeline/load.ts";
import { resolvePipeline } from "../pipeline/resolve.ts";

const ROOT = new URL("..", import.meta.url).pathname;

testBackends("plan bytes equal the real allocations on this device", async (backend) => {
  const loaded = await loadPipelineFile(`${ROOT}configs/pipelines/micro-smoke.yaml`);
  const { config } = await resolvePipeline(loaded);
  await withDevice(backend, {}, async (gpu) => {
    const planned = await compile(loaded.spec, config, {
      target: { backend: gpu.backend, name: gpu.name, limits: gpu.limits },
    });
    const real = await compile(loaded.spec, config, { device: gpu });
    assert(planned.bytes.total > 0 && planned.bytes.weights > 0 && planned.bytes.activations > 0);
    assertEquals(real.bytes, planned.bytes);
    assertEquals(
      real.buffers.map((b) => [b.name, b.bytes]),
      planned.buffers.map((b) => [b.name, b.bytes]),
    );
    // Everything the real device held was in the plan, and compile freed it again.
    assertEquals(gpu.memory.peak, planned.bytes.total);
    assertEquals(gpu.memory.live, 0);
  });
});

testBackends(
  "deno task plan --backend names the backend and prints the bytes a device allocates",
  async (backend) => {
    const file = `${ROOT}configs/pipelines/micro-smoke.yaml`;
    const r = await runCli(["tools/plan.ts", file, "--backend", backend]);
    assertEquals(r.code, 0, r.stderr);
    assert(r.stdout.includes(`backend ${backend} on `), r.stdout);
    const total = /total device memory: .* \((\d+) bytes\)/.exec(r.stdout);
    assert(total, r.stdout);
    const loaded = await loadPipelineFile(file);
    const { config } = await resolvePipeline(loaded);
    await withDevice(backend, {}, async (gpu) => {
      await compile(loaded.spec, config, { device: gpu });
      assertEquals(gpu.memory.peak, Number(total[1]));
    });
  },
);

testBackends("plan: sharded tensors and dispatch counts", async (backend) => {
  const loaded = await loadPipelineFile(`${ROOT}configs/pipelines/micro-smoke.yaml`);
  const { config } = await resolvePipeline(loaded);
  await withDevice(backend, { shardBytes: 8192 }, async (gpu) => {
    const plan = await compile(loaded.spec, config, { device: gpu });
    // 8 KiB shards split the 256×64 embedding (64 KiB) into 8.
    assertEquals(plan.sharded["model.embed_tokens.weight"], 8);
    const counts = countDispatches(plan.iteration);
    // Population 4, one micro-batch: one accumulate and one embedding gather per shard per member.
    assertEquals(counts.get("fitness/accumulate"), 4);
    assertEquals(counts.get("model/embedding"), 4 * 8);
  });
});

Deno.test("deno task plan prints stages, buffers and the total for every shipped pipeline", async () => {
  for await (const e of Deno.readDir(`${ROOT}configs/pipelines`)) {
    if (!e.name.endsWith(".yaml")) continue;
    const args = ["tools/plan.ts", `configs/pipelines/${e.name}`];
    // The paper's big sizes need a GPU's binding limit: plan them as for one.
    if (/qwen3-(4b|8b|14b|32b)/.test(e.name)) args.push("--max-binding", String(2 ** 32 - 4));
    const r = await runCli(args);
    assertEquals(r.code, 0, `${e.name}: ${r.stderr}`);
    for (
      const part of ["stages → kernels", "perturb", "update", "buffers", "total device memory"]
    ) {
      assert(r.stdout.includes(part), `${e.name}: "${part}" missing from\n${r.stdout}`);
    }
  }
});

Deno.test("deno task plan on a pipeline too big for the binding limit says what to change", async () => {
  const r = await runCli([
    "tools/plan.ts",
    "configs/pipelines/qwen3-32b.yaml",
    "--max-binding",
    String(128 << 20),
  ]);
  assertEquals(r.code, 2);
  assert(/micro-batch or max length/.test(r.stderr), r.stderr);
});

testBackends(
  "memory report: ES bytes from the planner beside Adam mixed precision",
  async (backend) => {
    const { adamBytes, memoryReport, memoryRow, withStorage } = await import(
      "../pipeline/memory.ts"
    );
    const { getPreset, paramCount } = await import("../model/presets.ts");
    const c = getPreset("qwen3-0.5b");
    const a = adamBytes(c, { microBatch: 16, maxLen: 256 });
    assertEquals(a.states, 16 * paramCount(c));
    // Doubling the tokens doubles the kept activations, not the optimizer states.
    assertEquals(adamBytes(c, { microBatch: 32, maxLen: 256 }).activations, 2 * a.activations);
    const loaded = await loadPipelineFile(`${ROOT}configs/pipelines/micro-smoke.yaml`);
    const { config } = await resolvePipeline(loaded);
    await withDevice(backend, {}, async (gpu) => {
      const plan = await compile(loaded.spec, config, { device: gpu });
      const row = memoryRow(plan, config);
      // The ES column is exactly what the device held while the engine was built.
      assertEquals(row.es, gpu.memory.peak);
      // θ in f32: 4 bytes a parameter, up to 16 bytes of alignment per buffer. A member's
      // matrices are perturbed in chunks where they are read, so its scratch is under θ/10.
      const buffers = plan.buffers.filter((b) => b.role === "weights").length;
      const slack = plan.bytes.weights - 4 * paramCount(config);
      assert(
        slack >= 0 && slack < 16 * buffers,
        `θ = ${plan.bytes.weights} B for ${paramCount(config)} parameters`,
      );
      assert(
        plan.bytes.scratch * 10 <= plan.bytes.weights,
        `member scratch ${plan.bytes.scratch} B against θ's ${plan.bytes.weights} B`,
      );
      assertEquals(row.es_weights, plan.bytes.weights + plan.bytes.scratch);
    });
    // bf16 θ: the report's column is what a bf16 engine really allocates, θ at 2 bytes a parameter.
    await withDevice(backend, {}, async (gpu16) => {
      const bf16 = await compile(withStorage(loaded.spec, "bf16"), config, { device: gpu16 });
      assertEquals(bf16.bytes.total, gpu16.memory.peak);
      const row = await memoryReport(loaded.spec, config, {
        target: { backend: gpu16.backend, name: gpu16.name, limits: gpu16.limits },
      });
      assertEquals(row.es_bf16, bf16.bytes.total);
      const slack = bf16.bytes.weights - 2 * paramCount(config);
      assert(slack >= 0 && slack < 16 * bf16.buffers.length, `bf16 θ = ${bf16.bytes.weights} B`);
      assert(row.es_bf16! < row.es && row.ratio_bf16! > row.ratio, JSON.stringify(row));
    });
    // The CLI table below does not use the device under test: once is enough.
    if (backend === "cpu") return;
    const r = await runCli(["tools/plan.ts", "--memory-table"]);
    assertEquals(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split("\n");
    assertEquals(lines.length, 2 + 6, r.stdout);
    for (const size of ["0.5b", "1.7b", "4b", "8b", "14b", "32b"]) {
      assert(r.stdout.includes(`qwen3-${size}`), size);
    }
  },
);

Deno.test("member_batch auto: as many members as keep their activations within θ's bytes", async () => {
  const loaded = await loadPipelineFile(`${ROOT}configs/pipelines/qwen3-0.5b.yaml`);
  const { getPreset } = await import("../model/presets.ts");
  const { DEFAULT_LIMITS } = await import("../pipeline/compile.ts");
  const config = getPreset("qwen3-0.5b");
  const target = {
    backend: "webgpu" as const,
    name: "planning",
    limits: {
      ...DEFAULT_LIMITS,
      maxStorageBufferBindingSize: 2 ** 32 - 4,
      maxBufferSize: 2 ** 32 - 4,
    },
  };
  const plan = (memberBatch: number | "auto") =>
    compile(
      { ...loaded.spec, fitness: { ...loaded.spec.fitness, member_batch: memberBatch } },
      config,
      { target },
    );
  const auto = await plan("auto");
  const group = auto.iteration.find((s) => s.op === "block" && s.what.endsWith("members at once"));
  assert(
    group && group.op === "block",
    JSON.stringify(auto.iteration.map((s) => s.op === "block" && s.what)),
  );
  const P = Number(group.what.split(" ")[0]);
  assert(P > 1 && P < auto.population, `auto picked ${P}`);
  // Within θ's bytes at P; one member more would not be.
  assert(auto.bytes.activations <= auto.bytes.weights, JSON.stringify(auto.bytes));
  const more = await plan(P + 1);
  assert(more.bytes.activations > more.bytes.weights, JSON.stringify(more.bytes));
  // The member scratch stays a small fraction of θ however many members share it.
  assert(auto.bytes.scratch * 10 < auto.bytes.weights, JSON.stringify(auto.bytes));
});
