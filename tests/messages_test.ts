// Messages that said too little (issue 13, item 9): each bad input now names the fault, the
// place (the file, the flag, or file:line:col in YAML) and the fix, on one line with exit 2,
// before any device starts; likely mistakes that still run get a warning line at their place.
import { assert, assertEquals, assertUserError, tempDir } from "./helpers.ts";
import { cli, oneLine, ROOT, train, writeSmoke } from "./reliability_helpers.ts";
import { loadPipelineFile } from "../pipeline/load.ts";
import { resolvePipeline } from "../pipeline/resolve.ts";
import { startTrainingStatus } from "../server/train_status.ts";
import type { Device } from "../kernels/device.ts";

const TINY = `${ROOT}tests/fixtures/qwen3-tiny-tied-f32`;

Deno.test("a negative number after a flag is that flag's value, checked by the flag", async () => {
  const dir = await tempDir();
  const file = await writeSmoke(dir);
  let r = await train([file, "--seed", "-3", "--out", `${dir}/a`]);
  const line = oneLine(r, { says: ['--seed must be a non-negative integer, got "-3"'] });
  assert(!/ambiguous/.test(line), line);
  r = await cli(["tools/plan.ts", file, "--max-binding", "-5"]);
  oneLine(r, { says: ['--max-binding must be a positive integer, got "-5"'] });
  r = await train([file, "--iterations", "-2", "--out", `${dir}/a`]);
  oneLine(r, { says: ["--iterations must be a positive integer"] });
});

Deno.test("flags are checked before the pipeline is read or a device starts", async () => {
  const missing = "/nonexistent/pipeline.yaml";
  let r = await cli(["tools/train.ts", missing, "--status-port", "abc"]);
  oneLine(r, { says: ['--status-port must be an integer 0..65535 (0 = a free port), got "abc"'] });
  r = await cli(["tools/train.ts", missing, "--no-local-eval"]);
  oneLine(r, { says: ["--no-local-eval needs --redis URL"] });
  r = await cli(["tools/train.ts", missing, "--backend", "tpu"]);
  oneLine(r, { says: ['--backend: unknown backend "tpu"'] });
});

Deno.test("eval: --max-len 1, --shard-bytes 4, rows beyond the model's positions, masks with holes", async () => {
  const dir = await tempDir();
  await Deno.writeTextFile(`${dir}/a.txt`, "It is a truth universally acknowledged\n");
  const evalArgs = (...a: string[]) => ["tools/eval.ts", "--model", TINY, ...a, "--backend", "cpu"];
  let r = await cli(evalArgs("--text", `${dir}/a.txt`, "--max-len", "1"));
  let line = oneLine(r, { says: ["--max-len must be at least 2"] });
  assert(!line.includes("a.txt"), `the text file is not to blame: ${line}`);

  r = await cli(evalArgs("--text", `${dir}/a.txt`, "--shard-bytes", "4"));
  line = oneLine(r, { says: ["--shard-bytes", "at least 16", "got 4"] });
  assert(!/shardBytes/.test(line), `no internal field names: ${line}`);

  const long = `${dir}/long.json`;
  await Deno.writeTextFile(long, JSON.stringify({ input_ids: [[1, 2], Array(4100).fill(7)] }));
  r = await cli(evalArgs("--tokens", long));
  oneLine(r, { says: [`${long}: row 1 has 4100 tokens`, `${TINY}/config.json`, "--max-len 4096"] });

  const holes = `${dir}/holes.json`;
  await Deno.writeTextFile(
    holes,
    JSON.stringify({
      input_ids: [[1, 2, 3, 4], [5, 6, 7, 8]],
      attention_mask: [[1, 1, 1, 1], [1, 0, 1, 1]],
    }),
  );
  r = await cli(evalArgs("--tokens", holes));
  oneLine(r, { says: [`${holes}: row 1: attention_mask has a 0 at position 1 before a 1`] });
  assertEquals(r.stdout, "");
});

Deno.test("a taken status port names where it was set: the flag, or the YAML's file:line:col", async () => {
  const dir = await tempDir();
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (taken.addr as Deno.NetAddr).port;
  try {
    const file = await writeSmoke(dir, { statusPort: port });
    const at = (await Deno.readTextFile(file)).split("\n").findIndex((l) => /status:/.test(l)) + 1;
    // The pipeline's port is where to start looking (tests/server_test.ts: it moves on); with
    // nowhere to move, the message names the YAML's place.
    const resolved = await resolvePipeline(await loadPipelineFile(file));
    const device = { name: "test device" } as Device;
    let line = await assertUserError(
      () => startTrainingStatus(resolved, { device, plannedMemoryBytes: null, portRetries: 0 }),
      `${file}:${at}:19: output.status.port`,
      `port ${port}`,
      "--no-status",
    );
    assert(!/\(or --no-status\) N/.test(line), line);
    const r = await cli([
      "tools/train.ts",
      file,
      "--out",
      `${dir}/a`,
      "--backend",
      "cpu",
      "--status-port",
      String(port),
    ]);
    line = oneLine(r, {
      says: [`port ${port} on 127.0.0.1 is in use`, "--status-port N (0 = any free port)"],
    });
    assert(!line.includes(file), `the flag set it, not the file: ${line}`);
    assert(!(await Deno.stat(`${dir}/a`).then(() => true, () => false)), "nothing written");
  } finally {
    taken.close();
  }
});

Deno.test("a micro_batch larger than the samples it batches: a warning at its place, and the run goes on", async () => {
  const dir = await tempDir();
  const file = await writeSmoke(dir, { microBatch: 16, samples: 8 });
  const at = (await Deno.readTextFile(file)).split("\n").findIndex((l) => /micro_batch:/.test(l)) +
    1;
  const r = await train([file, "--iterations", "1", "--out", `${dir}/a`]);
  assertEquals(r.code, 0, r.stderr);
  const warnings = r.stderr.trim().split("\n").filter((l) => /warning:/.test(l));
  assertEquals(warnings.length, 1, r.stderr);
  assert(
    warnings[0].includes(`${file}:${at}:16: fitness.micro_batch: 16 is more than the 8 samples`) &&
      warnings[0].includes("use micro_batch ≤ 8"),
    warnings[0],
  );
});

Deno.test("a refused resume is one line with the status server on too (its address comes after the checks)", async () => {
  const dir = await tempDir();
  const file = await writeSmoke(dir);
  const out = `${dir}/run`;
  let r = await train([file, "--iterations", "2", "--out", out]);
  assertEquals(r.code, 0, r.stderr);
  r = await cli(["tools/train.ts", file, "--resume", out, "--iterations", "1", "--backend", "cpu"]);
  const line = oneLine(r, { says: ["holds iteration 2, past --iterations 1"] });
  assert(!/status http/.test(r.stderr), line);
  r = await cli(["tools/train.ts", file, "--resume", out, "--iterations", "3", "--backend", "cpu"]);
  assertEquals(r.code, 0, r.stderr);
  assert(/esflow train: status http:\/\/127\.0\.0\.1:\d+\//.test(r.stderr), r.stderr);
});
