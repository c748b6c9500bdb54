// A resume that cannot be fooled (issue 13, items 1-3): it continues only the trajectory its
// checkpoint is on. Fewer iterations than the checkpoint holds, an edited or damaged state.json,
// a checkpoint under another iteration's name, another corpus or pipeline, weights that are not
// the ones written, another backend: each refuses with one line saying what changed, and
// nothing is rewritten. A run killed before its first checkpoint, or while one was being
// replaced, resumes to the bytes of a run that never stopped, and no leftovers remain.
// Micro-smoke on the CPU backend (seconds per run).
import { assert, assertEquals, tempDir } from "./helpers.ts";
import {
  assertSameRun,
  cli,
  copyDir,
  CORPUS,
  exists,
  leftovers,
  oneLine,
  sameFile,
  train,
  writeSmoke,
} from "./reliability_helpers.ts";

/** Straight runs of `n` iterations, made once per test file and shared. */
const straight = new Map<string, Promise<string>>();
function reference(n: number, every: number): Promise<string> {
  const key = `${n}/${every}`;
  if (!straight.has(key)) {
    straight.set(
      key,
      (async () => {
        const dir = await tempDir("esflow-ref-");
        const file = await writeSmoke(dir, { checkpointEvery: every });
        const r = await train([file, "--iterations", String(n), "--out", `${dir}/run`]);
        assertEquals(r.code, 0, r.stderr);
        return `${dir}/run`;
      })(),
    );
  }
  return straight.get(key)!;
}

Deno.test("resume with fewer iterations than the checkpoint holds refuses; the trajectory stays", async () => {
  const dir = await tempDir();
  const file = await writeSmoke(dir, { checkpointEvery: 1 });
  const out = `${dir}/run`;
  let r = await train([file, "--iterations", "3", "--out", out]);
  assertEquals(r.code, 0, r.stderr);
  const before = await Deno.readFile(`${out}/final/model.safetensors`);
  const stateBefore = await Deno.readTextFile(`${out}/final/state.json`);

  r = await train([file, "--resume", out, "--iterations", "2"]);
  oneLine(r, { says: ["holds iteration 3, past --iterations 2", "--iterations 3 or more"] });
  assertEquals(await Deno.readTextFile(`${out}/final/state.json`), stateBefore, "final/ untouched");
  assert(
    (await Deno.readFile(`${out}/final/model.safetensors`)).every((b, i) => b === before[i]),
    "final/ weights untouched",
  );

  // The same total: nothing to train, nothing rewritten.
  r = await train([file, "--resume", out, "--iterations", "3"]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(await Deno.readTextFile(`${out}/final/state.json`), stateBefore);

  r = await train([file, "--resume", out, "--iterations", "6"]);
  assertEquals(r.code, 0, r.stderr);
  await assertSameRun(await reference(6, 1), out, "3, refused 2, then 6");
});

/** A finished 3-iteration run (checkpoints iter-1, iter-2, final) copied into a fresh dir. */
async function finishedRun(): Promise<{ dir: string; out: string; file: string }> {
  const ref = await reference(3, 1);
  const dir = await tempDir();
  const out = `${dir}/run`;
  await copyDir(ref, out);
  return { dir, out, file: await writeSmoke(dir, { checkpointEvery: 1 }) };
}

/** Asserts a refused resume changed nothing in the run dir. */
async function unchanged(out: string, ref: string) {
  for (const f of ["final/state.json", "final/model.safetensors", "metrics.jsonl"]) {
    assert(await sameFile(`${ref}/${f}`, `${out}/${f}`), `${f} was rewritten by a refused resume`);
  }
}

Deno.test("resume checks state.json: an edited iteration, a truncated or garbage file, a renamed checkpoint", async () => {
  const ref = await reference(3, 1);
  {
    // iteration: 999 in final/: the digest shows the edit (it used to say "done: 6 iterations").
    const { out, file } = await finishedRun();
    const path = `${out}/final/state.json`;
    const s = JSON.parse(await Deno.readTextFile(path));
    await Deno.writeTextFile(path, JSON.stringify({ ...s, iteration: 999 }, null, 2));
    const r = await train([file, "--resume", out, "--iterations", "6"]);
    oneLine(r, { says: [`${out}/final/state.json`, "digest does not match"] });
    assertEquals(JSON.parse(await Deno.readTextFile(path)).iteration, 999);
  }
  for (
    const [what, damage] of [
      ["truncated", (t: string) => t.slice(0, t.length >> 1)],
      ["garbage", () => "\u0000\u0001 not json at all"],
    ] as const
  ) {
    // Never a silent fall back to checkpoints/iter-2.
    const { out, file } = await finishedRun();
    const path = `${out}/final/state.json`;
    await Deno.writeTextFile(path, damage(await Deno.readTextFile(path)));
    const r = await train([file, "--resume", out, "--iterations", "6"]);
    oneLine(r, { says: [`${out}/final/state.json is not valid JSON`, "damaged"] });
    assert(await sameFile(`${ref}/final/model.safetensors`, `${out}/final/model.safetensors`));
    assert(!(await exists(`${out}/checkpoints/iter-3`)), `${what}: nothing trained`);
  }
  {
    // A checkpoint under another iteration's name: its own iteration must match the name.
    const { out, file } = await finishedRun();
    await Deno.remove(`${out}/final`, { recursive: true });
    await Deno.rename(`${out}/checkpoints/iter-2`, `${out}/checkpoints/iter-5`);
    const r = await train([file, "--resume", out, "--iterations", "6"]);
    oneLine(r, { says: ["says iteration 2", "holds iteration 5"] });
  }
});

Deno.test("resume checks what it continues: the corpus, the pipeline, θ's checksum", async () => {
  const ref = await reference(3, 1);
  {
    // The corpus edited between the run and the resume (it used to change the result).
    const dir = await tempDir();
    const corpus = `${dir}/corpus.txt`;
    const text = await Deno.readTextFile(CORPUS);
    await Deno.writeTextFile(corpus, text);
    const file = await writeSmoke(dir, { checkpointEvery: 1, corpus });
    const out = `${dir}/run`;
    let r = await train([file, "--iterations", "3", "--out", out]);
    assertEquals(r.code, 0, r.stderr);
    const state = await Deno.readTextFile(`${out}/final/state.json`);
    await Deno.writeTextFile(corpus, text.replace("truth universally", "truth generally"));
    r = await train([file, "--resume", out, "--iterations", "6"]);
    oneLine(r, { says: [`${file}:`, "dataset.path", "the data changed since this run"] });
    assertEquals(await Deno.readTextFile(`${out}/final/state.json`), state);
  }
  {
    const { dir, out } = await finishedRun();
    const file = await writeSmoke(dir, { checkpointEvery: 1, sigma: 0.02 }, "q.yaml");
    const r = await train([file, "--resume", out, "--iterations", "6"]);
    oneLine(r, { says: ["the pipeline changed", "perturb.sigma: 0.01 → 0.02"] });
    await unchanged(out, ref);
  }
  {
    // One weight's bits changed: the file still loads, but it is not θ_3.
    const { out, file } = await finishedRun();
    const path = `${out}/final/model.safetensors`;
    const b = await Deno.readFile(path);
    b[b.length - 3] ^= 0x01;
    await Deno.writeFile(path, b);
    const r = await train([file, "--resume", out, "--iterations", "6"]);
    oneLine(r, { says: [`${path}: θ's checksum is`, "state.json recorded"] });
    assert(!(await exists(`${out}/checkpoints/iter-3`)), "nothing trained");
  }
});

Deno.test("resume on another backend refuses unless --allow-backend-change", async () => {
  const { out, file } = await finishedRun();
  const webgpu = (args: string[]) =>
    cli(["tools/train.ts", ...args, "--backend", "webgpu", "--no-status", "--quiet"]);
  let r = await webgpu([file, "--resume", out, "--iterations", "4"]);
  oneLine(r, { says: ["trained on the cpu backend", "--backend cpu", "--allow-backend-change"] });
  r = await webgpu([file, "--resume", out, "--iterations", "4", "--allow-backend-change"]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(JSON.parse(await Deno.readTextFile(`${out}/final/state.json`)).backend, "webgpu");
});

Deno.test("killed while writing its first checkpoint: --resume continues, a fresh --out is told to", async () => {
  const dir = await tempDir();
  const file = await writeSmoke(dir, { checkpointEvery: 1 });
  const out = `${dir}/run`;
  let r = await train([file, "--iterations", "3", "--out", out], {
    ESFLOW_TEST_FAULT: "checkpoint.weights@1",
  });
  assertEquals(r.signal, "SIGKILL", `the fault must kill it:\n${r.stderr}`);
  assert((await leftovers(out)).length > 0, "the kill left the checkpoint's temp dir");
  assert(!(await exists(`${out}/checkpoints/iter-1`)), "no checkpoint completed");

  r = await train([file, "--iterations", "3", "--out", out]);
  oneLine(r, { says: ["already holds a run; continue it with --resume"] });
  r = await train([file, "--resume", out, "--iterations", "3"]);
  assertEquals(r.code, 0, r.stderr);
  assert(/starting over from iteration 0/.test(r.stderr), r.stderr);
  assertEquals(await leftovers(out), [], "no leftovers after the resume");
  await assertSameRun(await reference(3, 1), out, "killed in its first checkpoint, resumed");
});

Deno.test("killed between moving final/ aside and renaming the new one: the old final/ comes back", async () => {
  const dir = await tempDir();
  const file = await writeSmoke(dir, { checkpointEvery: 0 });
  const out = `${dir}/run`;
  let r = await train([file, "--iterations", "3", "--out", out]);
  assertEquals(r.code, 0, r.stderr);
  r = await train([file, "--resume", out, "--iterations", "6"], {
    ESFLOW_TEST_FAULT: "checkpoint.aside@1",
  });
  assertEquals(r.signal, "SIGKILL", r.stderr);
  assert(!(await exists(`${out}/final`)), "final/ was moved aside when the kill came");
  assert((await leftovers(out)).some((p) => /^\.final\..*\.old\/$/.test(p)), "the old final/");

  r = await train([file, "--resume", out, "--iterations", "6"]);
  assertEquals(r.code, 0, r.stderr);
  assert(/put back .*final/.test(r.stderr), r.stderr);
  assertEquals(await leftovers(out), []);
  await assertSameRun(await reference(6, 0), out, "final/ restored, then resumed");
});

Deno.test("--resume of a dir that holds no run says so", async () => {
  const dir = await tempDir();
  const file = await writeSmoke(dir);
  const r = await train([file, "--resume", `${dir}/nothing`]);
  oneLine(r, { says: ["no checkpoint to resume from"] });
});

Deno.test("--resume DIR takes the seed and the pipeline from the run dir; a contradicting --seed is the error", async () => {
  const dir = await tempDir();
  const file = await writeSmoke(dir, { checkpointEvery: 1 });
  // Straight: seed 7 for 4 iterations.
  let r = await train([file, "--seed", "7", "--iterations", "4", "--out", `${dir}/straight`]);
  assertEquals(r.code, 0, r.stderr);
  // Started with --seed 7, resumed by naming the run dir alone: no pipeline, no seed.
  r = await train([file, "--seed", "7", "--iterations", "2", "--out", `${dir}/run`]);
  assertEquals(r.code, 0, r.stderr);
  const manifest = JSON.parse(await Deno.readTextFile(`${dir}/run/run.json`));
  assertEquals([manifest.seed, manifest.pipeline_file], [7, file]);
  assertEquals(manifest.pipeline_text, await Deno.readTextFile(file));
  // Even with the pipeline file edited since: the run continues with the pipeline it started.
  await Deno.writeTextFile(
    file,
    (await Deno.readTextFile(file)).replace("sigma: 0.01", "sigma: 0.5"),
  );
  const before = await Deno.readTextFile(`${dir}/run/final/state.json`);
  r = await train(["--resume", `${dir}/run`, "--seed", "8", "--iterations", "4"]);
  oneLine(r, { says: ["--seed 8 contradicts", "seed 7", `${dir}/run/run.json`, "drop --seed"] });
  assertEquals(await Deno.readTextFile(`${dir}/run/final/state.json`), before, "nothing rewritten");
  r = await train(["--resume", `${dir}/run`, "--iterations", "4"]);
  assertEquals(r.code, 0, r.stderr);
  await assertSameRun(`${dir}/straight`, `${dir}/run`, "seed 7 resumed by its run dir alone");
  // A pipeline that contradicts the run's is refused, naming the key.
  r = await train([file, "--resume", `${dir}/run`, "--iterations", "5"]);
  oneLine(r, { says: ["the pipeline changed since this run", "perturb.sigma"] });
});
