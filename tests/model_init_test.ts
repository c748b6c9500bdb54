// `model: {init: DIR}`: a checkpoint dir is its own config, so neither preset nor config is
// needed beside it; given, they must match it. `deno task plan` reads the same architecture.
import { assert, assertEquals, assertUserError, runCli, withTempDir } from "./helpers.ts";
import { getPreset } from "../model/presets.ts";
import { randomInit } from "../model/weights.ts";
import { saveCheckpoint } from "../model/checkpoint.ts";
import { loadPipelineText } from "../pipeline/load.ts";
import { resolvePipeline } from "../pipeline/resolve.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const SMOKE = `${ROOT}configs/pipelines/micro-smoke.yaml`;

/** micro-smoke with its model stage replaced by `model`, as a file in `dir`. */
async function pipelineWith(dir: string, model: string): Promise<string> {
  const text = (await Deno.readTextFile(SMOKE))
    .replace(/model:\n( {2}.*\n)+/, `model:\n${model}\n`)
    .replace("../../data/", `${ROOT}data/`);
  const file = `${dir}/p.yaml`;
  await Deno.writeTextFile(file, text);
  return file;
}

async function microCheckpoint(dir: string): Promise<string> {
  const config = getPreset("micro");
  await saveCheckpoint(`${dir}/ckpt`, { config, tensors: randomInit(config, { seed: 7 }) });
  return `${dir}/ckpt`;
}

Deno.test("model init: a checkpoint dir alone gives the architecture and the weights", async () => {
  await withTempDir(async (dir) => {
    await microCheckpoint(dir);
    // Relative to the pipeline file, as every path in a pipeline.
    const file = await pipelineWith(dir, "  type: qwen3\n  init: ckpt");
    const loaded = loadPipelineText(await Deno.readTextFile(file), { file });
    const r = await resolvePipeline(loaded);
    assertEquals(r.config, { ...getPreset("micro"), torchDtype: r.config.torchDtype });
    assertEquals(r.model.source, `${dir}/ckpt`);
    const want = new Map([...randomInit(getPreset("micro"), { seed: 7 })].map((t) => [t.name, t]));
    let n = 0;
    for await (const t of r.model.tensors()) {
      assertEquals(Array.from(t.data), Array.from(want.get(t.name)!.data), t.name);
      n++;
    }
    assertEquals(n, want.size);

    // `deno task plan` takes the same architecture from the checkpoint.
    const out = await runCli(["tools/plan.ts", file]);
    assertEquals(out.code, 0, out.stderr);
    assert(out.stdout.includes("vocab 256"), out.stdout);
  });
});

Deno.test("model init: a preset or config beside init must match the checkpoint", async () => {
  await withTempDir(async (dir) => {
    await microCheckpoint(dir);
    // The same architecture: accepted.
    const same = await pipelineWith(dir, "  type: qwen3\n  preset: micro\n  init: ckpt");
    await resolvePipeline(loadPipelineText(await Deno.readTextFile(same), { file: same }));
    // Another one: one line at model.init naming the key to drop.
    const other = await pipelineWith(dir, "  type: qwen3\n  preset: tiny\n  init: ckpt");
    await assertUserError(
      async () =>
        await resolvePipeline(loadPipelineText(await Deno.readTextFile(other), { file: other })),
      `${other}:`,
      "model.init",
      "different architecture than model.preset",
      "drop model.preset",
    );
  });
});

Deno.test("model init: a random init without preset or config, or a dir without config.json", async () => {
  await withTempDir(async (dir) => {
    const random = await pipelineWith(dir, "  type: qwen3\n  init: random");
    await assertUserError(
      async () =>
        await resolvePipeline(loadPipelineText(await Deno.readTextFile(random), { file: random })),
      "model: give preset or config",
      "init: a checkpoint dir",
    );
    await Deno.mkdir(`${dir}/empty`);
    const empty = await pipelineWith(dir, "  type: qwen3\n  init: empty");
    await assertUserError(
      async () =>
        await resolvePipeline(loadPipelineText(await Deno.readTextFile(empty), { file: empty })),
      "model.init",
      "has no config.json",
    );
  });
});
