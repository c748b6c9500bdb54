// A kill at any moment loses at most one checkpoint interval and never corrupts a run (issue
// 13): training is SIGKILLed at seeded random points — inside checkpoint writes (after the temp
// dir, config.json, each tensor, the weights, state.json, the fsync, the old checkpoint moved
// aside, the rename), around metrics lines, and at random times once training runs — and
// resumed after each kill. Every chain ends on the bytes of a run that never stopped, and no
// leftover of an interrupted write remains. Micro-smoke, checkpoint_every 1, the CPU backend.
import { assert, assertEquals, seeded, tempDir } from "./helpers.ts";
import {
  assertSameRun,
  exists,
  leftovers,
  metricsOf,
  ROOT,
  train,
  writeSmoke,
} from "./reliability_helpers.ts";

/** Where a checkpoint write or the loop can be killed (faults.ts), with how often. */
const POINTS: { point: string; upTo: number }[] = [
  { point: "run.manifest", upTo: 1 },
  { point: "iteration.metrics", upTo: 2 },
  { point: "iteration.done", upTo: 2 },
  { point: "checkpoint.temp", upTo: 2 },
  { point: "checkpoint.config", upTo: 2 },
  // micro has 24 tensors: a kill in the middle of the first few safetensors files.
  { point: "checkpoint.tensor", upTo: 40 },
  { point: "checkpoint.weights", upTo: 2 },
  { point: "checkpoint.files", upTo: 2 },
  { point: "checkpoint.synced", upTo: 2 },
  // Only when a checkpoint is replaced: final/ of the first leg when the run is extended.
  { point: "checkpoint.aside", upTo: 1 },
  { point: "checkpoint.renamed", upTo: 2 },
];

/** Kills at least this many times in all. */
const KILLS = 20;
/** The two legs of a chain: train to FIRST, then extend the finished run to TOTAL. */
const FIRST = 4, TOTAL = 7;

/** Runs train once: killed at a named point, killed at a random time, or left to finish. */
async function trial(
  args: string[],
  out: string,
  kill: { point: string } | { afterMs: number },
): Promise<"killed" | "done"> {
  if ("point" in kill) {
    const r = await train(args, { ESFLOW_TEST_FAULT: kill.point });
    if (r.signal === "SIGKILL") return "killed";
    assertEquals(r.code, 0, `train ${args.join(" ")} (${kill.point}):\n${r.stderr}`);
    return "done";
  }
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "tools/train.ts",
      ...args,
      "--backend",
      "cpu",
      "--no-status",
      "--quiet",
    ],
    cwd: ROOT,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const stderr = new Response(child.stderr).text();
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  {
    // Once training runs (a metrics line is on disk, or a checkpoint is being replaced), then
    // the seeded delay: the kill lands wherever the run is by then.
    const lines = (await metricsOf(out)).length;
    while (!exited && (await metricsOf(out)).length <= lines) {
      await new Promise((r) => setTimeout(r, 20));
    }
    await new Promise((r) => setTimeout(r, kill.afterMs));
    if (!exited) {
      try {
        child.kill("SIGKILL");
      } catch { /* exited meanwhile */ }
    }
  }
  const s = await status;
  if (s.signal === "SIGKILL") return "killed";
  assertEquals(s.code, 0, `train ${args.join(" ")}:\n${await stderr}`);
  return "done";
}

Deno.test(`SIGKILL at ${KILLS}+ seeded points, resumed after each: the bytes of an uninterrupted run, no leftovers`, async () => {
  const dir = await tempDir("esflow-faults-");
  const file = await writeSmoke(dir, { checkpointEvery: 1 });
  const ref = `${dir}/reference`;
  const r = await train([file, "--iterations", String(TOTAL), "--out", ref]);
  assertEquals(r.code, 0, r.stderr);

  const rng = seeded(13);
  // Every point in turn, in seeded shuffled rounds: each is tried, none is left to chance.
  const queue: typeof POINTS = [];
  const nextPoint = (ok: (p: (typeof POINTS)[number]) => boolean) => {
    for (;;) {
      const i = queue.findIndex(ok);
      if (i >= 0) return queue.splice(i, 1)[0];
      const round = [...POINTS];
      for (let k = round.length - 1; k > 0; k--) {
        const j = Math.floor(rng() * (k + 1));
        [round[k], round[j]] = [round[j], round[k]];
      }
      queue.push(...round);
    }
  };
  const log: string[] = [];
  let kills = 0, chains = 0;
  const hit = new Set<string>();
  while (kills < KILLS) {
    assert(chains < 12, `only ${kills} kills in ${chains} chains: the faults do not fire`);
    const out = `${dir}/chain-${chains++}`;
    for (const target of [FIRST, TOTAL]) {
      for (let tries = 0;; tries++) {
        assert(tries < 40, `chain ${out} to ${target} made no progress:\n${log.join("\n")}`);
        // A run dir with run.json holds a run: it is resumed, never started again.
        const resume = await exists(`${out}/run.json`);
        const args = [file, "--iterations", String(target), resume ? "--resume" : "--out", out];
        const kind = rng();
        // Mostly named points (a kill exactly inside a write), some at a random time.
        const kill = kind < 0.8
          ? (() => {
            // Points this run can reach: run.json is written by a fresh start only, and a
            // checkpoint is moved aside only when final/ of the first leg is replaced.
            const p = nextPoint((q) =>
              (q.point !== "run.manifest" || !resume) &&
              (q.point !== "checkpoint.aside" || target === TOTAL)
            );
            return { point: `${p.point}@${1 + Math.floor(rng() * p.upTo)}` };
          })()
          : { afterMs: Math.floor(rng() * 250) };
        const outcome = await trial(args, out, kill);
        log.push(`${out} → ${target}: ${JSON.stringify(kill)} ${outcome}`);
        if (outcome === "killed") {
          kills++;
          if ("point" in kill) hit.add(kill.point.split("@")[0]);
          continue;
        }
        break;
      }
    }
    await assertSameRun(ref, out, `${out} (${log.filter((l) => l.startsWith(out)).length} runs)`);
    assertEquals(await leftovers(out), [], `${out}: leftovers of killed writes`);
  }
  // The schedule reaches inside the checkpoint writes, not only the loop.
  const inside = [...hit].filter((p) => p.startsWith("checkpoint."));
  assert(
    inside.length >= 4,
    `kills inside checkpoint writes: ${inside.join(", ")}\n${log.join("\n")}`,
  );
  console.log(`${kills} kills over ${chains} chains; points hit: ${[...hit].sort().join(", ")}`);
});
