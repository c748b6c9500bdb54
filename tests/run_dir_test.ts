// The run dir's pieces (pipeline/run_dir.ts) on their own: the cleanup of what a killed write
// leaves, the sealed state, the message that names what changed, metrics truncation.
import { assert, assertEquals, tempDir } from "./helpers.ts";
import {
  cleanRunDir,
  firstDifference,
  latestCheckpoint,
  parseMetrics,
  RUN_STATE_FORMAT,
  type RunState,
  sealState,
  truncateMetrics,
} from "../pipeline/run_dir.ts";
import { UserError } from "../errors.ts";
import { listTree } from "./reliability_helpers.ts";

Deno.test("cleanRunDir: an old checkpoint whose replacement never arrived comes back; temps go", async () => {
  const d = await tempDir();
  const mk = (p: string) => Deno.mkdir(`${d}/${p}`, { recursive: true });
  await mk(".final.123-abc.old"); // final/ moved aside, the new one never renamed in
  await mk(".final.123-abc.tmp");
  await mk("checkpoints/iter-2");
  await mk("checkpoints/.iter-2.77-ff.old"); // iter-2 is back already: this one goes
  await mk("checkpoints/.iter-3.77-ff.tmp");
  await Deno.writeTextFile(`${d}/.metrics.jsonl.9-1.tmp`, "{");
  await Deno.writeTextFile(`${d}/metrics.jsonl`, "{}\n");
  await Deno.writeTextFile(`${d}/.hidden-but-mine`, "kept: not an atomic write's name");
  const c = await cleanRunDir(d);
  assertEquals(c.restored, [`${d}/final`]);
  assertEquals(c.removed.length, 4, c.removed.join(", "));
  assertEquals(await listTree(d), [
    ".hidden-but-mine",
    "checkpoints/",
    "checkpoints/iter-2/",
    "final/",
    "metrics.jsonl",
  ]);
});

Deno.test("sealState: any edit of a field breaks the seal; the same fields give the same digest", async () => {
  const state: RunState = {
    format: RUN_STATE_FORMAT,
    iteration: 3,
    iterations: 3,
    seed: 1,
    sigma: 0.01,
    alpha: 0.05,
    data: { samples: 10, train: 8, holdout: 2, samples_per_iteration: 4, digest: "d" },
    pipeline: {} as RunState["pipeline"],
    pipeline_digest: "p",
    theta_checksum: "t",
    backend: "cpu",
    adapter: "a",
  };
  const a = await sealState(state), b = await sealState({ ...state });
  assertEquals(a.state_digest, b.state_digest);
  const edited = await sealState({ ...state, iteration: 999 });
  assert(edited.state_digest !== a.state_digest);
  assertEquals((await sealState(a)).state_digest, a.state_digest, "resealing is idempotent");
});

Deno.test("firstDifference names the key that changed, in key order", () => {
  assertEquals(firstDifference({ a: 1, b: { c: 2 } }, { a: 1, b: { c: 2 } }), null);
  assertEquals(
    firstDifference({ perturb: { sigma: 0.01 } }, { perturb: { sigma: 0.02 } }),
    "perturb.sigma: 0.01 → 0.02",
  );
  assertEquals(firstDifference({ a: 1 }, { a: 1, z: [1] }), "z: absent → [1]");
});

Deno.test("latestCheckpoint: lenient readers skip a damaged state.json; a resume (strict) names it", async () => {
  const d = await tempDir();
  await Deno.mkdir(`${d}/checkpoints/iter-1`, { recursive: true });
  await Deno.writeTextFile(`${d}/checkpoints/iter-1/state.json`, JSON.stringify({ iteration: 1 }));
  await Deno.mkdir(`${d}/final`);
  await Deno.writeTextFile(`${d}/final/state.json`, '{"iteration": 3, "itera');
  assertEquals((await latestCheckpoint(d))?.dir, `${d}/checkpoints/iter-1`);
  let message = "";
  try {
    await latestCheckpoint(d, { strict: true });
  } catch (e) {
    assert(e instanceof UserError);
    message = e.message;
  }
  assert(message.startsWith(`${d}/final/state.json is not valid JSON`), message);
});

Deno.test("truncateMetrics keeps the lines before the resume point and drops a torn one", async () => {
  const d = await tempDir();
  const path = `${d}/metrics.jsonl`;
  await Deno.writeTextFile(path, '{"iter":0}\n{"iter":1}\n{"iter":2}\n{"iter":3,"fit');
  await truncateMetrics(path, 2);
  assertEquals(parseMetrics(await Deno.readTextFile(path)).map((l) => l.iter), [0, 1]);
  assertEquals(await listTree(d), ["metrics.jsonl"], "no temp file left");
});
