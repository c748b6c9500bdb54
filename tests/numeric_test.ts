// Numbers that cannot go NaN (issue 13, item 6). σ and α outside the f32 range are load errors
// (tests/bad_pipelines_test.ts has their file:line:col); what only shows while training stops
// the run with one line naming the iteration and the likely cause, exit 2, no checkpoint of the
// bad θ, and the last good checkpoint intact: fitness that turns non-finite, a θ with NaN or
// ±Inf when it would be checkpointed, a schedule that grows σ_t past f32. eval refuses weights
// that are not finite. Micro-smoke on the CPU backend.
import { assert, assertEquals, tempDir } from "./helpers.ts";
import { getPreset } from "../model/presets.ts";
import { randomInit } from "../model/weights.ts";
import { saveCheckpoint } from "../model/checkpoint.ts";
import {
  cli,
  exists,
  leftovers,
  metricsOf,
  oneLine,
  ROOT,
  train,
  writeSmoke,
} from "./reliability_helpers.ts";

/** Checkpoint iterations under a run dir's checkpoints/. */
async function checkpoints(out: string): Promise<number[]> {
  const names = await Array.fromAsync(Deno.readDir(`${out}/checkpoints`)).catch(() => []);
  return names.map((e) => Number(e.name.replace("iter-", ""))).sort((a, b) => a - b);
}

Deno.test("α so large that θ overflows: stopped at the checkpoint, nothing of the bad θ written", async () => {
  const dir = await tempDir();
  const file = await writeSmoke(dir, { checkpointEvery: 1, alpha: "3.0e38" });
  const out = `${dir}/run`;
  const r = await train([file, "--iterations", "4", "--out", out]);
  oneLine(r, {
    says: ["iteration 1: θ has", "non-finite values", "update.alpha", "no checkpoint of this θ"],
  });
  assertEquals(await checkpoints(out), [], "no checkpoint of a non-finite θ");
  assert(!(await exists(`${out}/final`)));
  assertEquals(await leftovers(out), [], "the refused checkpoint's temp dir is gone");
});

Deno.test("σ_t grown past f32 by its decay: stopped before the iteration, the last good checkpoint kept", async () => {
  const dir = await tempDir();
  const file = await writeSmoke(dir, {
    checkpointEvery: 1,
    sigma: "1.0e30\n  decay: { gamma: 1.0e10, every: 1 }",
  });
  const out = `${dir}/run`;
  const r = await train([file, "--iterations", "4", "--out", out]);
  oneLine(r, {
    says: [
      "iteration 1: σ_t = 1e+40",
      "perturb.decay.gamma",
      `${out}/checkpoints/iter-1 is intact`,
    ],
  });
  assertEquals(await checkpoints(out), [1]);
  assertEquals((await metricsOf(out)).map((l) => l.iter), [0], "no line for the stopped iteration");
  const state = JSON.parse(await Deno.readTextFile(`${out}/checkpoints/iter-1/state.json`));
  assertEquals(state.iteration, 1);
});

/**
 * A micro checkpoint from the random init: matrices times `matrices`, every vector (the norms'
 * weights) set to `vectors`, and one NaN when asked.
 */
async function initCheckpoint(
  dir: string,
  o: { matrices: number; vectors: number; nan?: boolean },
) {
  const config = getPreset("micro");
  const tensors = [...randomInit(config, { seed: 5 })].map((t, i) => {
    const data = t.shape.length === 1
      ? t.data.map(() => o.vectors)
      : t.data.map((v) => v * o.matrices);
    if (o.nan && i === 1) data[3] = NaN;
    return { ...t, data };
  });
  await saveCheckpoint(dir, { config, tensors });
  return dir;
}

Deno.test("fitness that turns non-finite stops the run at that iteration with the likely cause", async () => {
  const dir = await tempDir();
  // Finite weights whose products overflow f32: norms that scale by 1e37 before each matmul.
  const init = await initCheckpoint(`${dir}/init`, { matrices: 30, vectors: 1e37 });
  const file = await writeSmoke(dir, {
    checkpointEvery: 1,
    model: ["preset: micro", `init: ${init}`],
  });
  const out = `${dir}/run`;
  const r = await train([file, "--iterations", "3", "--out", out]);
  oneLine(r, {
    says: [
      "iteration 0: the fitness of 4 of 4 members is not finite",
      "likely cause:",
      "overflow f32",
    ],
  });
  assertEquals(await metricsOf(out), [], "no metrics line of non-finite numbers");
  assertEquals(await checkpoints(out), []);
});

Deno.test("eval and train refuse weights that are not finite, naming the tensor", async () => {
  const dir = await tempDir();
  const model = await initCheckpoint(`${dir}/nan-model`, { matrices: 1, vectors: 1, nan: true });
  await Deno.writeTextFile(`${dir}/a.txt`, "It is a truth universally acknowledged\n");
  const r = await cli([
    "tools/eval.ts",
    "--model",
    model,
    "--text",
    `${dir}/a.txt`,
    "--backend",
    "cpu",
  ]);
  oneLine(r, { says: [model, "non-finite values (NaN or ±Inf)", "use an earlier checkpoint"] });
  assertEquals(r.stdout, "", "no JSON of null scores");
  const file = await writeSmoke(dir, { model: ["preset: micro", `init: ${model}`] });
  const t = await train([file, "--iterations", "2", "--out", `${dir}/run`]);
  oneLine(t, { says: ["non-finite values"] });
});

Deno.test("a run stopped for non-finite numbers tells its watchers: end event, state failed, the line", async () => {
  const dir = await tempDir();
  const file = await writeSmoke(dir, {
    checkpointEvery: 1,
    sigma: "1.0e30\n  decay: { gamma: 1.0e10, every: 1 }",
  });
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "tools/train.ts",
      file,
      "--iterations",
      "4",
      "--out",
      `${dir}/run`,
      "--backend",
      "cpu",
      "--status-port",
      "0",
      "--quiet",
    ],
    cwd: ROOT,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    // Each iteration waits, so the client is connected before the run stops.
    env: { NO_COLOR: "1", ESFLOW_TEST_ITERATION_BLOCK_MS: "1000" },
  }).spawn();
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let stderr = "", url: string | undefined;
  while (!url) {
    const { value, done } = await reader.read();
    assert(!done, `train exited before its status URL:\n${stderr}`);
    stderr += value;
    url = /status (http:\/\/127\.0\.0\.1:\d+\/)/.exec(stderr)?.[1];
  }
  let events = "";
  for await (
    const chunk of (await fetch(`${url}api/events`)).body!.pipeThrough(new TextDecoderStream())
  ) {
    events += chunk;
    if (/event: end\n/.test(events)) break;
  }
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    stderr += value;
  }
  assertEquals((await child.status).code, 2, stderr);
  const end = JSON.parse(/event: end\ndata: (.*)\n/.exec(events)![1]);
  assertEquals(end.state, "failed");
  assert(/^iteration 1: σ_t = 1e\+40/.test(end.error), end.error);
  assert(stderr.trim().split("\n").at(-1)!.endsWith(end.error), stderr);
});
