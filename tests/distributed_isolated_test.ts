// Distributed ES as separate machines would run it, with nothing shared but Redis (TCP, an ACL
// user with a password, limited to esflow:* keys and no dangerous command): the coordinator in
// its own working dir with the pipeline, the corpus, an HF tokenizer and an init checkpoint; each worker in its own working dir and its own mount
// namespace, where a tmpfs hides the coordinator's dir (run dir, corpus, tokenizer, weights) and
// the checkout's data/. A resumed session (its ledger starts at a checkpoint, which crosses as a
// blob), a worker killed mid-download and restarted (it resumes from its chunks), a worker
// SIGKILLed while it holds a claim, and one that joins late with a warm cache (it fetches only
// the checkpoint the coordinator published since, and replays the ledger after it): the run ends
// with the single-process run's bytes.
import { assert, assertEquals, tempDir } from "./helpers.ts";
import { live, type Proc, watch } from "./process_helpers.ts";
import { startRedis, waitFor } from "./redis_helpers.ts";
import { RedisBus, runKeys } from "../pipeline/distributed.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const ITERATIONS = 6;

/** The pipeline, in the coordinator's dir: every path relative to it. */
const PIPELINE = `
name: dist-isolated
seed: 99
iterations: ${ITERATIONS}
dataset: { type: text_lines, path: corpus.txt, max_lines: 200, samples_per_iteration: 8, holdout: 8 }
tokenizer: { type: hf, path: pretrained }
model: { type: qwen3, init: pretrained }
perturb: { type: gaussian, population: 8, sigma: 0.01, antithetic: false }
fitness: { type: log_likelihood, micro_batch: 8, max_len: 32 }
shape: { type: rank }
update: { type: es, alpha: 0.05, nes: false }
output: { checkpoint_every: 2, eval_every: 1 }
`;

/**
 * Whether this machine lets the test hide paths from a worker: `unshare -m` and a tmpfs mount
 * need root (CAP_SYS_ADMIN). Probed once, so the test's name says which kind of run it is.
 */
function probeMountNamespace(): string | null {
  const dir = Deno.makeTempDirSync({ prefix: "esflow_ns_probe_" });
  try {
    const out = new Deno.Command("unshare", {
      args: ["-m", "sh", "-c", `mount -t tmpfs none ${dir}`],
      stdout: "null",
      stderr: "piped",
    }).outputSync();
    return out.success ? null : new TextDecoder().decode(out.stderr).trim().split("\n")[0];
  } catch (e) {
    return (e as Error).message.split("\n")[0];
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}
const NO_NAMESPACE = probeMountNamespace();

/** `deno run -A SCRIPT ARGS` in `cwd`, inside a mount namespace hiding `hide` when given. */
function spawn(
  script: string,
  args: string[],
  o: { cwd: string; env?: Record<string, string>; hide?: string[] },
): Proc {
  const deno = [Deno.execPath(), "run", "-A", `${ROOT}/${script}`, ...args];
  const quote = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
  // unshare execs sh, which execs deno: the PID (and so the consumer name) is deno's.
  const cmd = o.hide && !NO_NAMESPACE
    ? [
      "unshare",
      "-m",
      "sh",
      "-c",
      `${o.hide.map((d) => `mount -t tmpfs none ${quote(d)} && `).join("")}exec ${
        deno.map(quote).join(" ")
      }`,
    ]
    : deno;
  const child = new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    cwd: o.cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...o.env },
  }).spawn();
  return watch(child, `${script} ${args.join(" ")}`);
}

/** A dir with the pipeline and its files, as a machine of its own would hold them. */
async function pipelineDir(prefix: string): Promise<string> {
  const dir = await tempDir(prefix);
  await Deno.writeTextFile(`${dir}/p.yaml`, PIPELINE);
  await Deno.copyFile(`${ROOT}/data/pride_and_prejudice.txt`, `${dir}/corpus.txt`);
  await Deno.mkdir(`${dir}/pretrained`);
  for (const f of ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]) {
    await Deno.copyFile(`${ROOT}/data/caesar/pretrained/${f}`, `${dir}/pretrained/${f}`);
  }
  return dir;
}

async function sha256(path: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function lines(path: string): Promise<number> {
  try {
    return (await Deno.readTextFile(path)).trim().split("\n").filter(Boolean).length;
  } catch {
    return 0;
  }
}

const TRAIN = ["--quiet", "--no-status", "--backend", "cpu"];
const SLOW = { ESFLOW_RANGE_SIZE: "2", ESFLOW_CLAIM_DEADLINE_MS: "1500" };

Deno.test(
  NO_NAMESPACE
    ? `coordinator and workers in separate working dirs reach the single-process bytes (no mount namespace here: ${NO_NAMESPACE}; the coordinator's files are only outside the workers' dirs)`
    : "coordinator and workers in separate dirs, each worker in a mount namespace hiding the coordinator's files, reach the single-process bytes through a resume, a killed download, a SIGKILLed worker and a late join",
  async () => {
    const ref = await pipelineDir("esflow_iso_ref_");
    const coord = await pipelineDir("esflow_iso_coord_");
    const workers = await tempDir("esflow_iso_workers_");
    const redis = await startRedis({ tcp: true, password: "iso pw" });
    // Every esflow process connects as an ACL user that may touch only esflow:* keys and no
    // dangerous command: what a shared Redis would grant a run.
    const admin = await RedisBus.connect(redis.url, { name: "test" });
    await admin.call([
      "ACL",
      "SETUSER",
      "esflow",
      "on",
      ">run s3cret",
      "~esflow:*",
      "+@all",
      "-@dangerous",
    ]);
    admin.close();
    const url = redis.urlNoPassword.replace(
      "redis://",
      `redis://esflow:${encodeURIComponent("run s3cret")}@`,
    );
    const hide = [coord, ref, `${ROOT}/data`];
    const worker = (name: string, env: Record<string, string> = {}, cache = name) => {
      Deno.mkdirSync(`${workers}/${name}`, { recursive: true });
      return spawn("tools/worker.ts", [
        "--redis",
        url,
        "--backend",
        "cpu",
        "--cache",
        `${workers}/${cache}/cache`,
      ], { cwd: `${workers}/${name}`, env, hide });
    };
    try {
      if (!NO_NAMESPACE) {
        // What a worker's namespace sees: none of the coordinator's files, nor the checkout's data.
        const seen = new Deno.Command("unshare", {
          args: [
            "-m",
            "sh",
            "-c",
            [
              ...hide.map((d) => `mount -t tmpfs none ${d}`),
              `test ! -e ${coord}/p.yaml`,
              `test ! -e ${coord}/pretrained/model.safetensors`,
              `test ! -e ${ROOT}/data/pride_and_prejudice.txt`,
            ].join(" && "),
          ],
        }).outputSync();
        assert(seen.success, "the mount namespace hides the coordinator's files");
      }
      const single = spawn("tools/train.ts", ["p.yaml", "--out", "run", ...TRAIN], { cwd: ref });
      assertEquals(await single.wait(90_000), 0, single.out());

      // Two iterations alone, then a session with Redis that resumes at 2.
      const alone = spawn("tools/train.ts", [
        "p.yaml",
        "--out",
        "run",
        "--iterations",
        "2",
        ...TRAIN,
      ], {
        cwd: coord,
      });
      assertEquals(await alone.wait(90_000), 0, alone.out());

      const slow = { ...SLOW, ESFLOW_TEST_EVAL_DELAY_MS: "400" };
      // One worker downloads slowly and is killed mid-download; one is killed holding a claim.
      const cut = worker("cut", { ESFLOW_TEST_CHUNK_DELAY_MS: "500" });
      const victim = worker("victim", { ...SLOW, ESFLOW_TEST_EVAL_DELAY_MS: "60000" });
      await waitFor(() => [cut, victim].every((p) => p.out().includes("waiting for a run")), {
        ms: 60_000,
        what: "workers to connect",
      });
      // Small chunks, so the init checkpoint (463 KB) takes several.
      const c = spawn(
        "tools/train.ts",
        [
          "p.yaml",
          "--resume",
          "run",
          "--iterations",
          String(ITERATIONS),
          "--redis",
          url,
          "--no-local-eval",
          ...TRAIN,
        ],
        { cwd: coord, env: { ...slow, ESFLOW_BLOB_CHUNK_BYTES: "65536" } },
      );
      await waitFor(() => {
        let n = 0;
        try {
          for (const e of Deno.readDirSync(`${workers}/cut/cache/blobs`)) {
            if (!e.name.endsWith(".part")) continue;
            // Whole chunks only: chunk i is written as i.tmpPID and renamed to i when complete.
            n += [...Deno.readDirSync(`${workers}/cut/cache/blobs/${e.name}`)]
              .filter((c) => /^\d+$/.test(c.name)).length;
          }
        } catch { /* not yet */ }
        return n >= 2;
      }, { ms: 60_000, what: "the slow worker's first chunks" });
      cut.kill("SIGKILL");
      await cut.wait(10_000).catch(() => {});
      const resumed = worker("cut2", slow, "cut");

      const bus = await RedisBus.connect(redis.url, { name: "test" });
      try {
        await waitFor(async () => {
          const reply = await bus.call(["XPENDING", runKeys("dist-isolated").tasks, "evaluators"])
            .catch(() => null);
          return JSON.stringify(reply ?? "").includes(`:${victim.pid}"`);
        }, { ms: 60_000, what: "the victim to claim a range" });
      } finally {
        bus.close();
      }
      victim.kill("SIGKILL");
      await victim.wait(10_000).catch(() => {});

      // Iterations 2 and 3 done and checkpoints/iter-4 published: a worker joins late, with the
      // victim's (complete) cache.
      await waitFor(async () => (await lines(`${coord}/run/metrics.jsonl`)) >= 4, {
        ms: 90_000,
        what: "iteration 3",
      });
      const watch = await RedisBus.connect(redis.url, { name: "test" });
      try {
        await waitFor(async () => {
          const ck = (await watch.hash(runKeys("dist-isolated").meta)).checkpoint;
          return ck !== undefined && JSON.parse(ck).iteration === 4;
        }, { ms: 60_000, what: "the checkpoint of iteration 4 in Redis" });
      } finally {
        watch.close();
      }
      const late = worker("late", {}, "victim");
      // The other is paused until the late one serves, so the run waits for it.
      resumed.kill("SIGSTOP");
      await waitFor(() => late.out().includes("serving as"), {
        ms: 60_000,
        what: "the late worker",
      })
        .finally(() => resumed.kill("SIGCONT"));

      assertEquals(await c.wait(120_000), 0, c.out());
      assertEquals(await resumed.wait(30_000), 0, resumed.out());
      assertEquals(await late.wait(30_000), 0, late.out());

      assertEquals(
        await sha256(`${coord}/run/final/model.safetensors`),
        await sha256(`${ref}/run/final/model.safetensors`),
        "the distributed run ends with the single-process bytes",
      );
      // The restarted download kept the chunks it had; the warm cache fetched only iter-4, whose
      // files crossed in 64 KiB chunks, plus the tree that lists them.
      const r = /bootstrap (\d+) bytes of blobs, (\d+) chunks fetched from Redis, (\d+) resumed/
        .exec(resumed.out());
      assert(
        r && Number(r[3]) >= 2,
        `the restarted worker resumed its download:\n${resumed.out()}`,
      );
      assert(/θ from the checkpoint of iteration 2 in Redis/.test(resumed.out()), resumed.out());
      assert(/θ from the checkpoint of iteration 4 in Redis/.test(late.out()), late.out());
      let chunks = 1;
      for (const e of Deno.readDirSync(`${coord}/run/checkpoints/iter-4`)) {
        const size = Deno.statSync(`${coord}/run/checkpoints/iter-4/${e.name}`).size;
        chunks += Math.max(1, Math.ceil(size / 65536));
      }
      const l = /bootstrap (\d+) bytes of blobs, (\d+) chunks fetched/.exec(late.out());
      assert(
        l && Number(l[1]) > 400_000 && Number(l[2]) > 0 && Number(l[2]) <= chunks,
        `the late worker fetched the new checkpoint only (${chunks} chunks):\n${late.out()}`,
      );
      const replayed = /replayed (\d+) ledger entries from iteration 4; at iteration (\d+)/
        .exec(late.out());
      assert(
        replayed && Number(replayed[1]) <= 1 && Number(replayed[2]) === 4 + Number(replayed[1]),
        late.out(),
      );
      const m = /applied (\d+) updates, θ at iteration (\d+)/.exec(late.out());
      assert(m && Number(m[1]) === ITERATIONS - 4 && m[2] === String(ITERATIONS), late.out());
    } finally {
      for (const p of [...live]) {
        p.kill("SIGCONT");
        p.kill();
        await p.wait(10_000).catch(() => {});
      }
      await redis.stop();
      for (const d of [ref, coord, workers, redis.dir]) {
        await Deno.remove(d, { recursive: true }).catch(() => {});
      }
    }
  },
);
