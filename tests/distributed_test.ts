// Distributed ES over Redis Streams, end to end with real processes and a real redis-server:
// a coordinator and workers reach the single-process bytes; a worker SIGKILLed while it holds a
// claim, and a worker that joins late (from the latest checkpoint the coordinator published, or
// with --no-publish-checkpoints from θ_0), change nothing; Redis going away stops the coordinator
// with a checkpoint that --resume continues; a coordinator SIGKILLed and resumed keeps its
// workers; a worker whose tokens differ is refused; a password in the URL works and its absence is a
// clear error; a worker on another backend than the coordinator's is refused in one line. Every
// process runs the CPU backend unless a test says otherwise. Plus the pieces: the device checksum
// (both backends) against its TypeScript twin, the result set, URLs.
import { assert, assertEquals, tempDir, testBackends, withDevice } from "./helpers.ts";
import { live, type Proc, watch } from "./process_helpers.ts";
import { startRedis, type TestRedis, waitFor } from "./redis_helpers.ts";
import type { Backend } from "../kernels/device.ts";
import { createTensor } from "../kernels/tensor.ts";
import { checksumReference, WeightsChecksum } from "../kernels/checksum.ts";
import {
  DivergenceError,
  memberRanges,
  parseRedisUrl,
  RedisBus,
  ResultSet,
  runKeys,
} from "../pipeline/distributed.ts";
import { fetchTree, putTree } from "../pipeline/blobs.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const ITERATIONS = 6;
const POPULATION = 8;

/** micro preset, N = 8, a checkpoint every 2 iterations (a late worker's bootstrap). */
const PIPELINE = `
name: dist-test
seed: 4321
iterations: ${ITERATIONS}
dataset: { type: text_lines, path: ${ROOT}data/pride_and_prejudice.txt, max_lines: 200, samples_per_iteration: 8, holdout: 8 }
tokenizer: { type: bytes }
model: { type: qwen3, preset: micro, init: random }
perturb: { type: gaussian, population: ${POPULATION}, sigma: 0.01, antithetic: false }
fitness: { type: log_likelihood, micro_batch: 8, max_len: 32 }
shape: { type: rank }
update: { type: es, alpha: 0.05, nes: false }
output: { checkpoint_every: 2, eval_every: 1 }
`;

/** `deno run -A SCRIPT ARGS` in the checkout, watched. */
function spawn(script: string, args: string[], env: Record<string, string> = {}): Proc {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, ...args],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...env },
  }).spawn();
  return watch(child, `${script} ${args.join(" ")}`);
}

/** Runs `fn` with a temp dir holding the pipeline and a fresh redis-server; cleans up all. */
async function withRun(
  o: { tcp?: boolean; password?: string },
  fn: (x: { dir: string; file: string; redis: TestRedis }) => Promise<void>,
): Promise<void> {
  const dir = await tempDir("esflow_dist_");
  const file = `${dir}/p.yaml`;
  await Deno.writeTextFile(file, PIPELINE);
  const redis = await startRedis(o);
  try {
    await fn({ dir, file, redis });
  } finally {
    for (const p of [...live]) {
      p.kill();
      await p.wait(10_000).catch(() => {});
    }
    await redis.stop();
    for (const c of caches.splice(0)) await Deno.remove(c, { recursive: true }).catch(() => {});
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    await Deno.remove(redis.dir, { recursive: true }).catch(() => {});
  }
}

/**
 * The backend of every process of these runs, named rather than left to `auto`: a run is
 * bit-identical only within one backend.
 */
const BACKEND: Backend = "cpu";

function train(file: string, args: string[], env: Record<string, string> = {}): Proc {
  return spawn(
    "tools/train.ts",
    [file, "--quiet", "--no-status", "--backend", BACKEND, ...args],
    env,
  );
}

/** Every worker's own cache dir (a fresh one unless a test shares one), removed by withRun. */
const caches: string[] = [];

function worker(
  url: string,
  env: Record<string, string> = {},
  o: { backend?: Backend; cache?: string } = {},
): Proc {
  const cache = o.cache ?? Deno.makeTempDirSync({ prefix: "esflow_worker_cache_" });
  caches.push(cache);
  return spawn(
    "tools/worker.ts",
    ["--redis", url, "--backend", o.backend ?? BACKEND, "--cache", cache],
    env,
  );
}

async function metricsLines(out: string): Promise<number> {
  try {
    return (await Deno.readTextFile(`${out}/metrics.jsonl`)).trim().split("\n").filter(Boolean)
      .length;
  } catch {
    return 0;
  }
}

async function sameBytes(a: string, b: string, what: string): Promise<void> {
  const x = await Deno.readFile(`${a}/final/model.safetensors`);
  const y = await Deno.readFile(`${b}/final/model.safetensors`);
  assertEquals(x.length, y.length, what);
  assert(x.every((v, i) => v === y[i]), `${what}: model.safetensors differs`);
}

/** The single-process reference run, made once. */
let reference: Promise<string> | null = null;
function referenceRun(): Promise<string> {
  reference ??= (async () => {
    const dir = await tempDir("esflow_dist_ref_");
    await Deno.writeTextFile(`${dir}/p.yaml`, PIPELINE);
    const p = train(`${dir}/p.yaml`, ["--out", `${dir}/run`]);
    assertEquals(await p.wait(60_000), 0, p.out());
    return `${dir}/run`;
  })();
  return reference;
}

/** Settings that keep a run going long enough to kill or add a process in it. */
const SLOW = { ESFLOW_RANGE_SIZE: "2", ESFLOW_CLAIM_DEADLINE_MS: "1500" };

testBackends(
  "the device's weights checksum equals its TypeScript twin, sharded or not, and sees one flipped bit",
  (backend) =>
    withDevice(backend, { shardBytes: 1024 }, async (gpu) => {
      const rng = (n: number, k: number) =>
        Float32Array.from({ length: n }, (_, i) => Math.sin(i * k));
      const datas = [rng(1000, 0.37), rng(7, 1.1), rng(64 * 9, 0.05)];
      const shapes = [[1000], [7], [64, 9]];
      const tensors = datas.map((d, i) => createTensor(gpu, `t${i}`, shapes[i], { data: d }));
      assert(tensors[2].shards.length > 1, "the 64×9 tensor is sharded at 1 KiB");
      const ck = new WeightsChecksum(gpu, tensors);
      const want = checksumReference(datas);
      assertEquals(await ck.compute(), want);
      assertEquals(await ck.compute(), want, "recomputing gives the same digest");
      const flipped = datas.map((d) => d.slice());
      new Uint32Array(flipped[2].buffer)[300] ^= 1;
      const other = checksumReference(flipped);
      assert(other !== want, "one flipped low bit changes the digest");
      const s1 = tensors[2].shards[1];
      gpu.write(s1.buffer, flipped[2].subarray(s1.rowStart * 9, (s1.rowStart + s1.rows) * 9));
      assertEquals(await ck.compute(), other);
      ck.destroy();
    }),
);

Deno.test("result set: stale and duplicate results are ignored, another θ is divergence", () => {
  const ranges = memberRanges(5, 2);
  assertEquals(ranges, [[0, 2], [2, 4], [4, 5]]);
  const set = new ResultSet({ session: "s", iteration: 3, checksum: "abc", ranges });
  const r = (o: Record<string, string | number>) =>
    Object.fromEntries(
      Object.entries({ session: "s", iter: 3, checksum: "abc", consumer: "w", ...o }).map((
        [k, v],
      ) => [k, String(v)]),
    );
  assertEquals(set.offer(r({ iter: 2, start: 0, end: 2, fitness: "[9,9]" })), "stale");
  assertEquals(set.offer(r({ session: "old", start: 0, end: 2, fitness: "[9,9]" })), "stale");
  assertEquals(set.offer(r({ start: 0, end: 2, fitness: "[-1.5,-2.25]" })), "accepted");
  assertEquals(set.offer(r({ start: 0, end: 2, fitness: "[-1.5,-2.25]" })), "duplicate");
  assertEquals(set.offer(r({ start: 4, end: 5, fitness: "[0.1]", consumer: "x" })), "accepted");
  assert(!set.complete);
  assertEquals(set.offer(r({ start: 2, end: 4, fitness: "[-3,1e-300]" })), "accepted");
  assert(set.complete);
  assertEquals(set.fitness(), [-1.5, -2.25, -3, 1e-300, 0.1]);
  assertEquals([...set.contributors], [["w", 4], ["x", 1]]);
  let err: unknown;
  try {
    set.offer(r({ start: 0, end: 2, fitness: "[0,0]", checksum: "def" }));
  } catch (e) {
    err = e;
  }
  assert(
    err instanceof DivergenceError && /diverged at iteration 3/.test(err.message),
    String(err),
  );
});

Deno.test("redis URLs: password, ACL user, database, unix socket; the password never shows", () => {
  let t = parseRedisUrl("redis://alice:s%40cret@10.0.0.5:6380/2");
  assertEquals(t.socket, { host: "10.0.0.5", port: 6380 });
  assertEquals([t.username, t.password, t.database], ["alice", "s@cret", 2]);
  assert(!t.display.includes("cret"), t.display);
  t = parseRedisUrl("redis://:pw@localhost");
  assertEquals([t.username, t.password, t.socket], [undefined, "pw", {
    host: "localhost",
    port: 6379,
  }]);
  t = parseRedisUrl("unix://bob:pw@/run/redis/redis.sock?db=3");
  assertEquals([t.socket, t.username, t.password, t.database], [
    { path: "/run/redis/redis.sock" },
    "bob",
    "pw",
    3,
  ]);
  assert(!t.display.includes("pw"), t.display);
  for (const bad of ["localhost:6379", "http://x", "redis://h/x"]) {
    let msg = "";
    try {
      parseRedisUrl(bad);
    } catch (e) {
      msg = (e as Error).message;
    }
    assert(/redis:\/\//.test(msg), `${bad}: ${msg}`);
  }
});

Deno.test("coordinator + 2 workers (3 processes) reach the single-process bytes", async () => {
  const ref = await referenceRun();
  await withRun({}, async ({ dir, file, redis }) => {
    const w = [worker(redis.url), worker(redis.url)];
    await waitFor(() => w.every((p) => p.out().includes("waiting for a run")), {
      ms: 30_000,
      what: "workers to connect",
    });
    // No local evaluation: on the CPU backend the coordinator alone can finish the run before
    // a worker has built its engine, so only then is "workers evaluated" certain. The
    // coordinator's own share beside workers is covered by the SIGKILL and Redis tests.
    const c = train(file, ["--out", `${dir}/run`, "--redis", redis.url, "--no-local-eval"]);
    assertEquals(await c.wait(90_000), 0, c.out());
    for (const p of w) {
      assertEquals(await p.wait(20_000), 0, p.out());
      assert(p.out().includes(`esflow worker: backend ${BACKEND} on `), p.out());
    }
    await sameBytes(ref, `${dir}/run`, "coordinator + 2 workers");
    // Who evaluated what: every member of every iteration exactly once, workers included.
    const bus = await RedisBus.connect(redis.url, { name: "test" });
    const meta = await bus.hash(runKeys("dist-test").meta);
    bus.close();
    assertEquals(meta.status, "done");
    const contributors = JSON.parse(meta.contributors) as Record<string, number>;
    const total = Object.values(contributors).reduce((a, b) => a + b, 0);
    assertEquals(total, ITERATIONS * POPULATION, meta.contributors);
    assert(
      Object.keys(contributors).every((k) => k.startsWith("worker@")),
      `only workers evaluated: ${meta.contributors}`,
    );
  });
});

Deno.test("a worker on another backend than the coordinator's is refused in one line; the run finishes the same bytes", async () => {
  const ref = await referenceRun();
  await withRun({}, async ({ dir, file, redis }) => {
    // No local evaluation: the run waits for a worker, so the refused one cannot race its end.
    const c = train(file, ["--out", `${dir}/run`, "--redis", redis.url, "--no-local-eval"]);
    const other: Backend = BACKEND === "cpu" ? "webgpu" : "cpu";
    const refused = worker(redis.url, {}, { backend: other });
    assertEquals(await refused.wait(60_000), 2, refused.out());
    // stdout and stderr arrive interleaved: find the error line rather than take the last.
    const errors = refused.out().split("\n").filter((l) => l.includes(" evaluates on the "));
    assertEquals(errors.length, 1, refused.out());
    assert(
      new RegExp(
        `^esflow worker: run dist-test evaluates on the ${BACKEND} backend and this worker on ` +
          `${other}: .*; start the worker with --backend ${BACKEND}$`,
      ).test(errors[0]),
      refused.out(),
    );
    assert(!/\bat .*:\d+:\d+/.test(refused.out()), `no stack trace:\n${refused.out()}`);
    const w = worker(redis.url);
    assertEquals(await c.wait(90_000), 0, c.out());
    assertEquals(await w.wait(20_000), 0, w.out());
    await sameBytes(ref, `${dir}/run`, "after a refused worker");
  });
});

Deno.test("a worker SIGKILLed while it holds a claim: the run completes with the same bytes", async () => {
  const ref = await referenceRun();
  await withRun({}, async ({ dir, file, redis }) => {
    // The victim is slow, so it is mid-evaluation when killed; the others keep a pace that
    // leaves the run going until its claim passes the deadline and is reclaimed.
    const victim = worker(redis.url, { ...SLOW, ESFLOW_TEST_EVAL_DELAY_MS: "60000" });
    const other = worker(redis.url, { ...SLOW, ESFLOW_TEST_EVAL_DELAY_MS: "150" });
    await waitFor(() => [victim, other].every((p) => p.out().includes("waiting for a run")), {
      ms: 30_000,
      what: "workers to connect",
    });
    const c = train(file, ["--out", `${dir}/run`, "--redis", redis.url], {
      ...SLOW,
      ESFLOW_TEST_EVAL_DELAY_MS: "150",
    });
    const bus = await RedisBus.connect(redis.url, { name: "test" });
    const tasks = runKeys("dist-test").tasks;
    try {
      // XPENDING lists claims per consumer; the consumer name carries the PID.
      await waitFor(async () => {
        const reply = await bus.call(["XPENDING", tasks, "evaluators"]).catch(() => null);
        return JSON.stringify(reply ?? "").includes(`:${victim.pid}"`);
      }, { ms: 60_000, what: "the victim to claim a range" });
    } finally {
      bus.close();
    }
    victim.kill("SIGKILL");
    assertEquals(await c.wait(90_000), 0, c.out());
    assertEquals(await other.wait(20_000), 0, other.out());
    await sameBytes(ref, `${dir}/run`, "after a SIGKILLed worker");
  });
});

/** The checkpoint meta names, or null. */
async function publishedCheckpoint(
  bus: RedisBus,
): Promise<{ iteration: number; tree: string } | null> {
  const ck = (await bus.hash(runKeys("dist-test").meta)).checkpoint;
  return ck ? JSON.parse(ck) : null;
}

Deno.test("a worker that joins late starts from the latest checkpoint in Redis, replays only the ledger after it, contributes; Redis keeps one checkpoint and the ledger from it", async () => {
  const ref = await referenceRun();
  await withRun({}, async ({ dir, file, redis }) => {
    const slow = { ...SLOW, ESFLOW_TEST_EVAL_DELAY_MS: "500" };
    // Only workers evaluate, and the first is paused once the late one is due: the run cannot
    // end without the late worker, however slowly it starts.
    const first = worker(redis.url, slow);
    const c = train(file, ["--out", `${dir}/run`, "--redis", redis.url, "--no-local-eval"], slow);
    const bus = await RedisBus.connect(redis.url, { name: "test" });
    const keys = runKeys("dist-test");
    let late: Proc;
    try {
      // Iterations 0 and 1 done: the coordinator published checkpoints/iter-2, and the ledger
      // starts there for a joiner.
      let ck: { iteration: number; tree: string } | null = null;
      await waitFor(async () => (ck = await publishedCheckpoint(bus)) !== null, {
        ms: 60_000,
        what: "the checkpoint of iteration 2 in Redis",
      });
      assertEquals(ck!.iteration, 2);
      assertEquals((await bus.hash(keys.meta)).ledger_from, "2");
      // Its claim passes the deadline and the late worker takes it over.
      first.kill("SIGSTOP");
      late = worker(redis.url, { ESFLOW_TEST_EVAL_DELAY_MS: "500" });
      // The next checkpoint replaces it: the one of iteration 2 leaves Redis, and the ledger
      // starts at 4 once that entry is in.
      await waitFor(async () => (await publishedCheckpoint(bus))?.iteration === 4, {
        ms: 90_000,
        what: "the checkpoint of iteration 4 in Redis",
      });
      // The coordinator points meta at the new checkpoint first and deletes the old one after.
      await waitFor(async () => {
        const blobs = await bus.call(["SMEMBERS", `esflow:dist-test:blobs`]) as unknown[];
        return !blobs.map(String).includes(ck!.tree);
      }, { ms: 30_000, what: "the checkpoint of iteration 2 to leave Redis" });
      await waitFor(async () => {
        const e = RedisBus.entries(await bus.call(["XRANGE", keys.ledger, "-", "+", "COUNT", 1]));
        return e[0]?.fields.iter === "4";
      }, { ms: 60_000, what: "the ledger to start at iteration 4" });
    } finally {
      bus.close();
    }
    assertEquals(await c.wait(90_000), 0, c.out());
    assertEquals(await late.wait(20_000), 0, late.out());
    first.kill("SIGCONT");
    assertEquals(await first.wait(20_000), 0, first.out());
    await sameBytes(ref, `${dir}/run`, "with a late worker from a published checkpoint");
    const log = late.out();
    const k = Number(/θ from the checkpoint of iteration (\d+) in Redis/.exec(log)?.[1]);
    assert(k >= 2, `the late worker started from a published checkpoint:\n${log}`);
    const r = /replayed (\d+) ledger entries from iteration (\d+); at iteration (\d+)/.exec(log);
    assert(r && Number(r[2]) === k && Number(r[1]) + k === Number(r[3]), log);
    assert(Number(r[1]) < Number(r[3]), `it replayed fewer entries than θ's iterations:\n${log}`);
    const m = /evaluated (\d+) members in \d+ ranges, applied (\d+) updates/.exec(log);
    assert(m && Number(m[1]) > 0, `the late worker evaluated members:\n${log}`);
    assertEquals(Number(m[2]), ITERATIONS - k, `it applied only the updates after ${k}:\n${log}`);
  });
});

Deno.test("a joiner whose checkpoint is replaced under its download bootstraps again from the newer one; the same bytes", async () => {
  const ref = await referenceRun();
  await withRun({}, async ({ dir, file, redis }) => {
    const slow = { ...SLOW, ESFLOW_TEST_EVAL_DELAY_MS: "500" };
    const first = worker(redis.url, slow);
    // 64 KiB chunks: θ (463 KB) takes 8, so a slow download of it spans a checkpoint interval.
    const c = train(file, ["--out", `${dir}/run`, "--redis", redis.url, "--no-local-eval"], {
      ...slow,
      ESFLOW_BLOB_CHUNK_BYTES: "65536",
    });
    const bus = await RedisBus.connect(redis.url, { name: "test" });
    let late: Proc;
    try {
      await waitFor(async () => (await publishedCheckpoint(bus))?.iteration === 2, {
        ms: 60_000,
        what: "the checkpoint of iteration 2 in Redis",
      });
      late = worker(redis.url, {
        ESFLOW_TEST_CHUNK_DELAY_MS: "400",
        ESFLOW_TEST_EVAL_DELAY_MS: "500",
      });
      // The coordinator publishes iter-4 and drops iter-2 while the late worker downloads it;
      // then the run waits for the late worker.
      await waitFor(async () => (await publishedCheckpoint(bus))?.iteration === 4, {
        ms: 60_000,
        what: "the checkpoint of iteration 4 in Redis",
      });
      first.kill("SIGSTOP");
    } finally {
      bus.close();
    }
    assertEquals(await c.wait(90_000), 0, c.out());
    assertEquals(await late.wait(30_000), 0, late.out());
    first.kill("SIGCONT");
    assertEquals(await first.wait(20_000), 0, first.out());
    await sameBytes(ref, `${dir}/run`, "with a joiner that bootstrapped twice");
    const log = late.out();
    assert(log.includes("published a newer checkpoint than this worker's θ"), log);
    assert(/θ from the checkpoint of iteration 4 in Redis/.test(log), log);
    assert(!/θ from the checkpoint of iteration 2/.test(log), log);
    const m = /applied (\d+) updates, θ at iteration (\d+)/.exec(log);
    assert(m && Number(m[1]) === ITERATIONS - 4 && m[2] === String(ITERATIONS), log);
  });
});

Deno.test("with --no-publish-checkpoints a worker started late replays the ledger from the initial weights, contributes", async () => {
  const ref = await referenceRun();
  await withRun({}, async ({ dir, file, redis }) => {
    const slow = { ...SLOW, ESFLOW_TEST_EVAL_DELAY_MS: "500" };
    const first = worker(redis.url, slow);
    const c = train(file, [
      "--out",
      `${dir}/run`,
      "--redis",
      redis.url,
      "--no-local-eval",
      "--no-publish-checkpoints",
    ], slow);
    // Iterations 0 and 1 done: checkpoints/iter-2 exists and the ledger has two entries.
    await waitFor(
      () => Deno.stat(`${dir}/run/checkpoints/iter-2/state.json`).then(() => true, () => false),
      { ms: 60_000, what: "checkpoints/iter-2" },
    );
    // Its claim passes the deadline and the late worker takes it over.
    first.kill("SIGSTOP");
    const late = worker(redis.url);
    assertEquals(await c.wait(90_000), 0, c.out());
    assertEquals(await late.wait(20_000), 0, late.out());
    first.kill("SIGCONT");
    assertEquals(await first.wait(20_000), 0, first.out());
    await sameBytes(ref, `${dir}/run`, "with a late worker");
    const bus = await RedisBus.connect(redis.url, { name: "test" });
    try {
      const meta = await bus.hash(runKeys("dist-test").meta);
      assertEquals([meta.checkpoint, meta.ledger_from], [undefined, "0"], "no θ in Redis");
    } finally {
      bus.close();
    }
    const log = late.out();
    // No checkpoint crosses for a late joiner: θ_0 from the seed, then the ledger's updates.
    assert(/θ from random init \(seed \d+\) \(iteration 0\)/.test(log), log);
    const r = /replayed (\d+) ledger entries from iteration 0; at iteration (\d+)/.exec(log);
    assert(r && Number(r[1]) >= 2 && r[1] === r[2], `it replayed from θ_0:\n${log}`);
    const m = /evaluated (\d+) members in \d+ ranges, applied (\d+) updates/.exec(log);
    assert(m && Number(m[1]) > 0, `the late worker evaluated members:\n${log}`);
    assertEquals(Number(m[2]), ITERATIONS, `it applied every update:\n${log}`);
  });
});

Deno.test("a worker whose θ differs (a tampered checkpoint in Redis) stops the run with a clear divergence error", async () => {
  await withRun({}, async ({ dir, file, redis }) => {
    const out = `${dir}/run`;
    // Two iterations alone, then a resumed session with Redis: its ledger starts at 2, so a
    // worker bootstraps from the checkpoint the coordinator publishes in Redis.
    const first = train(file, ["--out", out, "--iterations", "2"]);
    assertEquals(await first.wait(60_000), 0, first.out());
    // Only workers evaluate: the run waits for the one that joins.
    const c = train(file, [
      "--resume",
      out,
      "--iterations",
      String(ITERATIONS),
      "--redis",
      redis.url,
      "--no-local-eval",
    ]);
    const bus = await RedisBus.connect(redis.url, { name: "test" });
    const scratch = await tempDir("esflow_tamper_");
    try {
      const keys = runKeys("dist-test");
      let meta: Record<string, string> = {};
      await waitFor(async () => {
        meta = await bus.hash(keys.meta);
        return meta.checkpoint !== undefined;
      }, { ms: 60_000, what: "the published checkpoint" });
      const ck = JSON.parse(meta.checkpoint) as { iteration: number; tree: string };
      assertEquals(ck.iteration, 2);
      // Flip one bit of the last weight in a copy, publish it, and point the run at it: the
      // worker bootstraps from a θ nobody else has.
      const tree = await fetchTree(bus, "dist-test", ck.tree, { cache: `${scratch}/cache` });
      const files: Record<string, string> = {};
      for (const e of Deno.readDirSync(tree.dir)) {
        const bytes = await Deno.readFile(`${tree.dir}/${e.name}`);
        if (e.name === "model.safetensors") bytes[bytes.length - 2] ^= 1;
        await Deno.writeFile(`${scratch}/${e.name}`, bytes);
        files[e.name] = `${scratch}/${e.name}`;
      }
      const tampered = await putTree(bus, "dist-test", files);
      await bus.call([
        "HSET",
        keys.meta,
        "checkpoint",
        JSON.stringify({ iteration: 2, tree: tampered.digest }),
      ]);
    } finally {
      bus.close();
      await Deno.remove(scratch, { recursive: true });
    }
    const w = worker(redis.url);
    assertEquals(await c.wait(60_000), 2, c.out());
    assertEquals(await w.wait(20_000), 2, w.out());
    assert(/θ from the checkpoint of iteration 2 in Redis/.test(w.out()), w.out());
    assert(
      /^esflow train: weights diverged at iteration \d+: worker@\S+ has checksum [0-9a-f]{16}, the coordinator [0-9a-f]{16}.*; wrote .*checkpoints\/iter-\d+, continue with --resume/m
        .test(c.out()),
      c.out(),
    );
    assert(/^esflow worker: weights diverged/m.test(w.out()), w.out());
  });
});

Deno.test("Redis goes away: the coordinator exits 2 with one line and a checkpoint; --resume finishes the same bytes", async () => {
  const ref = await referenceRun();
  await withRun({}, async ({ dir, file, redis }) => {
    const env = { ...SLOW, ESFLOW_TEST_EVAL_DELAY_MS: "300", ESFLOW_REDIS_GRACE_MS: "1000" };
    const out = `${dir}/run`;
    const c = train(file, ["--out", out, "--redis", redis.url], env);
    await waitFor(async () => (await metricsLines(out)) >= 2, {
      ms: 60_000,
      what: "two iterations",
    });
    await redis.stop();
    assertEquals(await c.wait(60_000), 2, c.out());
    const lines = c.out().trim().split("\n");
    const last = lines[lines.length - 1];
    assert(
      /^esflow train: redis at unix:\/\/.* went away .*; wrote .*checkpoints\/iter-\d+, continue with --resume /
        .test(last),
      c.out(),
    );
    const k = Number(/iter-(\d+)/.exec(last)![1]);
    assert(k >= 2 && k < ITERATIONS, last);
    const state = JSON.parse(await Deno.readTextFile(`${out}/checkpoints/iter-${k}/state.json`));
    assertEquals(state.iteration, k);

    // Redis back (a new server, empty): the coordinator resumes and a worker joins it,
    // bootstrapping from that checkpoint (the ledger now starts there).
    const again = await startRedis();
    try {
      const w = worker(again.url, { ESFLOW_TEST_EVAL_DELAY_MS: "100" });
      const r = train(file, ["--resume", out, "--redis", again.url], {
        ...env,
        ESFLOW_TEST_EVAL_DELAY_MS: "100",
      });
      assertEquals(await r.wait(90_000), 0, r.out());
      assertEquals(await w.wait(20_000), 0, w.out());
      assert(new RegExp(`θ from the checkpoint of iteration ${k} in Redis`).test(w.out()), w.out());
    } finally {
      await again.stop();
      await Deno.remove(again.dir, { recursive: true }).catch(() => {});
    }
    await sameBytes(ref, out, "stopped by Redis and resumed");
    const iters = (await Deno.readTextFile(`${out}/metrics.jsonl`)).trim().split("\n").map((l) =>
      JSON.parse(l).iter
    );
    assertEquals(iters, Array.from({ length: ITERATIONS }, (_, i) => i));
  });
});

Deno.test("a coordinator SIGKILLed and restarted with --resume is picked up by the same worker, which fetches only the new checkpoint; the same bytes", async () => {
  const ref = await referenceRun();
  await withRun({}, async ({ dir, file, redis }) => {
    const env = { ...SLOW, ESFLOW_TEST_EVAL_DELAY_MS: "300" };
    const out = `${dir}/run`;
    const w = worker(redis.url, env);
    // Only the worker evaluates, so the run waits for it across the restart.
    const c = train(file, ["--out", out, "--redis", redis.url, "--no-local-eval"], env);
    await waitFor(
      () => Deno.stat(`${out}/checkpoints/iter-2/state.json`).then(() => true, () => false),
      { ms: 60_000, what: "checkpoints/iter-2" },
    );
    c.kill("SIGKILL");
    await c.wait(10_000).catch(() => {});
    // The worker finishes what it claimed and idles, blocked in XREADGROUP on the tasks stream
    // that the new session deletes: the case that must not end it.
    const bus = await RedisBus.connect(redis.url, { name: "test" });
    try {
      await waitFor(async () => {
        const reply = await bus.call(["XPENDING", runKeys("dist-test").tasks, "evaluators"]);
        return Array.isArray(reply) && Number(reply[0]) === 0;
      }, { ms: 30_000, what: "the worker to finish its claims" });
    } finally {
      bus.close();
    }
    await new Promise((r) => setTimeout(r, 500));
    const again = train(file, ["--resume", out, "--redis", redis.url, "--no-local-eval"], env);
    const code = await again.wait(90_000).catch((e) => {
      throw new Error(`${(e as Error).message}\nthe worker:\n${w.out()}`);
    });
    assertEquals(code, 0, again.out());
    assertEquals(await w.wait(20_000), 0, w.out());
    await sameBytes(ref, out, "a coordinator restarted under a running worker");
    const log = w.out();
    assert(log.includes("the coordinator of dist-test restarted; bootstrapping again"), log);
    const boots = [...log.matchAll(/bootstrap (\d+) bytes of blobs, (\d+) chunks fetched/g)];
    assertEquals(boots.length, 2, log);
    const k = /θ from the checkpoint of iteration (\d+) in Redis/.exec(log)?.[1];
    assert(k !== undefined && Number(k) >= 2, log);
    // The second time the samples are cached: only the checkpoint crosses, one chunk per file
    // (all under 4 MiB) and one for the tree that lists them.
    const files = [...Deno.readDirSync(`${out}/checkpoints/iter-${k}`)].length;
    assertEquals(Number(boots[0][2]), 1, `first bootstrap: the samples only\n${log}`);
    assertEquals(Number(boots[1][2]), files + 1, log);
  });
});

Deno.test("a worker whose tokens differ from the coordinator's is refused in one line before it evaluates; the run finishes the same bytes", async () => {
  const ref = await referenceRun();
  await withRun({}, async ({ dir, file, redis }) => {
    // No local evaluation: the run waits for a worker, so nothing ends before the refusal.
    const c = train(file, ["--out", `${dir}/run`, "--redis", redis.url, "--no-local-eval"]);
    const bus = await RedisBus.connect(redis.url, { name: "test" });
    const keys = runKeys("dist-test");
    let digest = "";
    try {
      await waitFor(async () => {
        digest = (await bus.hash(keys.meta)).data_digest ?? "";
        return digest !== "";
      }, { ms: 60_000, what: "the published data digest" });
      // As if this worker's tokenizer (another esflow) turned the same samples into other ids.
      await bus.call(["HSET", keys.meta, "data_digest", "0".repeat(64)]);
      const refused = worker(redis.url);
      assertEquals(await refused.wait(60_000), 2, refused.out());
      const errors = refused.out().split("\n").filter((l) => l.includes("other tokens"));
      assertEquals(errors.length, 1, refused.out());
      assert(
        /^esflow worker: run dist-test: this worker tokenizes the published samples to other tokens than the coordinator; .*same pipeline$/
          .test(errors[0]),
        refused.out(),
      );
      assert(/evaluated 0 members/.test(refused.out()) || !/evaluated/.test(refused.out()));
      await bus.call(["HSET", keys.meta, "data_digest", digest]);
    } finally {
      bus.close();
    }
    const w = worker(redis.url);
    assertEquals(await c.wait(90_000), 0, c.out());
    assertEquals(await w.wait(20_000), 0, w.out());
    await sameBytes(ref, `${dir}/run`, "after a refused worker");
  });
});

Deno.test("requirepass: the URL's password works; without it, one clear line and exit 2", async () => {
  await withRun({ tcp: true, password: "s3cret pw" }, async ({ dir, file, redis }) => {
    let p = train(file, ["--out", `${dir}/none`, "--redis", redis.urlNoPassword]);
    assertEquals(await p.wait(60_000), 2, p.out());
    assert(
      /^esflow train: redis at redis:\/\/127\.0\.0\.1:\d+: authentication failed .*redis:\/\/:PASSWORD@/m
        .test(p.out()),
      p.out(),
    );
    p = worker(redis.url.replace("s3cret", "bogus"));
    assertEquals(await p.wait(60_000), 2, p.out());
    assert(/^esflow worker: redis at .*\*\*\*.*authentication failed/m.test(p.out()), p.out());
    assert(!p.out().includes("bogus"), "the password is not printed");
    await Deno.stat(`${dir}/none`).then(() => assert(false, "nothing is written"), () => {});

    const w = worker(redis.url);
    await waitFor(() => w.out().includes("waiting for a run"), { ms: 30_000, what: "the worker" });
    // No local evaluation: the worker must evaluate, however slowly it builds its engine.
    const c = train(file, [
      "--out",
      `${dir}/run`,
      "--redis",
      redis.url,
      "--iterations",
      "3",
      "--no-local-eval",
    ], { ...SLOW, ESFLOW_TEST_EVAL_DELAY_MS: "300" });
    assertEquals(await c.wait(90_000), 0, c.out());
    assertEquals(await w.wait(20_000), 0, w.out());
    assert(/run dist-test done: .* evaluated [1-9]\d* members/.test(w.out()), w.out());
  });
});
