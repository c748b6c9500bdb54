// Blobs in Redis (pipeline/blobs.ts), against a real redis-server: a download in chunks checked
// whole; a cache with the same digest fetches nothing; a download cut short resumes from the
// chunks it has; a damaged cached chunk or cached blob is fetched again; a chunk damaged in
// Redis, or a blob Redis does not hold, is one clear line; trees; a new session drops old blobs;
// a worker's --cache that cannot be made.
import { assert, assertEquals, tempDir } from "./helpers.ts";
import { startRedis } from "./redis_helpers.ts";
import { RedisBus } from "../pipeline/distributed.ts";
import {
  blobKeys,
  dropBlobsExcept,
  fetchBlob,
  fetchTree,
  putBlob,
  putTree,
} from "../pipeline/blobs.ts";
import { UserError } from "../errors.ts";

const RUN = "blob-test";

async function withBus(fn: (bus: RedisBus, cache: string) => Promise<void>): Promise<void> {
  const redis = await startRedis({ tcp: true, password: "pw blob" });
  const cache = await tempDir("esflow_blobcache_");
  const bus = await RedisBus.connect(redis.url, { name: "test" });
  try {
    await fn(bus, cache);
  } finally {
    bus.close();
    await redis.stop();
    await Deno.remove(cache, { recursive: true }).catch(() => {});
    await Deno.remove(redis.dir, { recursive: true }).catch(() => {});
  }
}

function bytes(n: number, k = 7): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i * k + (i >> 8)) & 255);
}

async function rejects(p: Promise<unknown>, re: RegExp): Promise<void> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  assert(err instanceof UserError && re.test(err.message), String(err));
  assert(!(err as Error).message.includes("\n"), "one line");
}

Deno.test("blobs: chunked upload and download through a password-protected Redis, checked whole; a matching cache fetches nothing", async () => {
  await withBus(async (bus, cache) => {
    const data = bytes(10_000);
    const ref = await putBlob(bus, RUN, data, { chunkBytes: 1024 });
    assertEquals(ref.size, 10_000);
    assert(ref.sent);
    assertEquals((await putBlob(bus, RUN, data, { chunkBytes: 1024 })).sent, false, "not twice");
    const got = await fetchBlob(bus, RUN, ref.digest, { cache });
    assertEquals([got.chunks, got.fetched, got.resumed], [10, 10, 0]);
    assertEquals(await Deno.readFile(got.path), data);
    const before = await bus.netBytes();
    const again = await fetchBlob(bus, RUN, ref.digest, { cache });
    const after = await bus.netBytes();
    assertEquals(again.fetched, 0);
    // Only the two INFO commands crossed: nothing for the blob.
    assert(after.output - before.output < 4000, JSON.stringify({ before, after }));
    // An empty blob is a blob too.
    const empty = await putBlob(bus, RUN, new Uint8Array(0), { chunkBytes: 1024 });
    assertEquals(
      (await Deno.readFile((await fetchBlob(bus, RUN, empty.digest, { cache })).path)).length,
      0,
    );
  });
});

Deno.test("blobs: a download cut short resumes from its chunks; damaged cached chunks and blobs are fetched again", async () => {
  await withBus(async (bus, cache) => {
    const data = bytes(8 * 512 + 100, 13);
    const ref = await putBlob(bus, RUN, data, { chunkBytes: 512 });
    // A download killed after 4 chunks leaves blobs/D.part/0..3; chunk 2 damaged on disk.
    const parts = `${cache}/blobs/${ref.digest}.part`;
    await Deno.mkdir(parts, { recursive: true });
    for (let i = 0; i < 4; i++) {
      await Deno.writeFile(`${parts}/${i}`, data.subarray(i * 512, (i + 1) * 512));
    }
    await Deno.writeFile(`${parts}/2`, bytes(512, 3));
    const got = await fetchBlob(bus, RUN, ref.digest, { cache });
    assertEquals([got.chunks, got.resumed, got.refetched, got.fetched], [9, 3, 1, 6]);
    assertEquals(await Deno.readFile(got.path), data);
    // The whole cached blob damaged: fetched again, all of it.
    const f = await Deno.readFile(got.path);
    f[100] ^= 1;
    await Deno.writeFile(got.path, f);
    const again = await fetchBlob(bus, RUN, ref.digest, { cache });
    assertEquals(again.fetched, 9);
    assertEquals(await Deno.readFile(again.path), data);
  });
});

Deno.test("blobs: a chunk damaged in Redis, a blob Redis lacks and a bad digest are one line each", async () => {
  await withBus(async (bus, cache) => {
    const data = bytes(3000);
    const ref = await putBlob(bus, RUN, data, { chunkBytes: 1024 });
    await bus.call(["SETRANGE", blobKeys(RUN, ref.digest).chunk(1), 5, "X"]);
    await rejects(
      fetchBlob(bus, RUN, ref.digest, { cache }),
      /chunk 1 of blob \w+ in Redis does not match/,
    );
    await rejects(
      fetchBlob(bus, RUN, "0".repeat(64), { cache }),
      /blob 000000000000 is not in Redis/,
    );
    await rejects(fetchBlob(bus, RUN, "../etc", { cache }), /is not a SHA-256 digest/);
  });
});

Deno.test("blobs: a tree of files lands as a directory; a new session drops the blobs it does not keep", async () => {
  await withBus(async (bus, cache) => {
    const src = await tempDir("esflow_tree_");
    try {
      await Deno.writeFile(`${src}/a.bin`, bytes(5000));
      await Deno.writeTextFile(`${src}/b.json`, '{"x": 1}');
      const tree = await putTree(bus, RUN, { "a.bin": `${src}/a.bin`, "b.json": `${src}/b.json` }, {
        chunkBytes: 1000,
      });
      const got = await fetchTree(bus, RUN, tree.digest, { cache });
      assertEquals(await Deno.readFile(`${got.dir}/a.bin`), bytes(5000));
      assertEquals(await Deno.readTextFile(`${got.dir}/b.json`), '{"x": 1}');
      assertEquals((await fetchTree(bus, RUN, tree.digest, { cache })).fetched, 0);
      const other = await putBlob(bus, RUN, bytes(10), { chunkBytes: 1000 });
      await dropBlobsExcept(bus, RUN, new Set([other.digest]));
      const keys = (await bus.call(["KEYS", `esflow:${RUN}:blob:*`]) as string[]).sort();
      assertEquals(
        keys,
        [blobKeys(RUN, other.digest).manifest, blobKeys(RUN, other.digest).chunk(0)].sort(),
      );
    } finally {
      await Deno.remove(src, { recursive: true });
    }
  });
});

Deno.test("worker: an empty --cache or one that cannot be created is one line and exit 2", async () => {
  const root = new URL("..", import.meta.url).pathname;
  for (
    const [cache, re] of [
      ["", /^esflow worker: --cache needs a directory; deno task worker --redis URL/],
      [
        "/etc/passwd/x",
        /^esflow worker: --cache \/etc\/passwd\/x: cannot create the worker's cache there \(.*\); give a writable directory$/,
      ],
    ] as const
  ) {
    const r = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "tools/worker.ts",
        "--redis",
        "unix:///nonexistent.sock",
        "--cache",
        cache,
      ],
      cwd: root,
      stdin: "null",
      env: { NO_COLOR: "1" },
    }).output();
    const err = new TextDecoder().decode(r.stderr).trim();
    assertEquals(r.code, 2, err);
    assertEquals(err.split("\n").length, 1, err);
    assert(re.test(err), err);
  }
});
