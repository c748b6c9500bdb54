/**
 * Content-addressed blobs in Redis: how a distributed run hands a worker on another machine its
 * data, its tokenizer files, its initial weights and its latest checkpoint, with nothing shared
 * but Redis (no path, no HTTP, so no second credential: Redis's password or ACL user is the
 * only one).
 *
 * Keys of run R, for a blob whose SHA-256 is D (hex):
 *
 *   esflow:R:blob:D       HASH    size, chunk_bytes, chunks, sha256 (= D), chunk_sha256
 *                                 (the chunks' SHA-256, comma-separated); written after the
 *                                 chunks, so a manifest means every chunk is in
 *   esflow:R:blob:D:i     STRING  bytes [i·chunk_bytes, (i+1)·chunk_bytes) of the blob
 *   esflow:R:blobs        SET     every D of the run, so a new session drops what it no longer uses
 *
 * A worker's cache (its own scratch dir, `--cache`) holds `blobs/D`, checked against D whenever it
 * is used: a cached copy with the right digest costs no Redis traffic at all. A download writes
 * each verified chunk to `blobs/D.part/i` first, so a download cut short (the worker killed,
 * Redis gone) resumes from the chunks it has; a chunk whose digest does not match its manifest
 * (a damaged cache, a bad copy) is fetched again.
 *
 * A tree is a directory of a few files (a checkpoint: config.json and model.safetensors): one
 * blob per file, and a JSON blob `{"files": {name: D}}` naming them, materialized in the cache as
 * `trees/T/name`.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { UserError } from "../errors.ts";
import type { RedisBus } from "./distributed/bus.ts";

/** Chunk size of new blobs: ESFLOW_BLOB_CHUNK_BYTES, default 4 MiB (a few ms on a LAN). */
export function blobChunkBytes(): number {
  const v = Deno.env.get("ESFLOW_BLOB_CHUNK_BYTES");
  if (v === undefined) return 4 << 20;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0 || n > 512 << 20) {
    throw new UserError(
      `ESFLOW_BLOB_CHUNK_BYTES must be an integer from 1 to ${512 << 20}, got "${v}"`,
    );
  }
  return n;
}

/** The Redis keys of blob `digest` of run `run`. */
export function blobKeys(
  run: string,
  digest: string,
): { manifest: string; chunk: (i: number) => string; set: string } {
  const manifest = `esflow:${run}:blob:${digest}`;
  return { manifest, chunk: (i) => `${manifest}:${i}`, set: `esflow:${run}:blobs` };
}

/** A blob as the run names it. */
export interface BlobRef {
  /** SHA-256 of the bytes, hex. */
  digest: string;
  size: number;
}

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** Bytes to publish: in memory, or a file read chunk by chunk (a checkpoint may be GBs). */
export type BlobSource = Uint8Array | { path: string };

/** Calls `each` with the source's chunks of `chunkBytes`, in order. */
async function forChunks(
  src: BlobSource,
  chunkBytes: number,
  each: (chunk: Uint8Array, i: number) => Promise<void> | void,
): Promise<void> {
  if (src instanceof Uint8Array) {
    for (let i = 0, s = 0; s < src.length || i === 0; i++, s += chunkBytes) {
      await each(src.subarray(s, Math.min(src.length, s + chunkBytes)), i);
      if (src.length === 0) break;
    }
    return;
  }
  const f = await Deno.open(src.path, { read: true });
  try {
    const buf = new Uint8Array(chunkBytes);
    for (let i = 0;; i++) {
      let n = 0;
      while (n < chunkBytes) {
        const r = await f.read(buf.subarray(n));
        if (r === null) break;
        n += r;
      }
      if (n === 0 && i > 0) break;
      await each(buf.subarray(0, n), i);
      if (n < chunkBytes) break;
    }
  } finally {
    f.close();
  }
}

/**
 * Publishes `src` as a blob of run `run` and returns its digest. A blob already complete in
 * Redis (same digest) is not sent again.
 */
export async function putBlob(
  bus: RedisBus,
  run: string,
  src: BlobSource,
  o: { chunkBytes?: number } = {},
): Promise<BlobRef & { sent: boolean }> {
  const chunkBytes = o.chunkBytes ?? blobChunkBytes();
  const whole = createHash("sha256");
  const chunkDigests: string[] = [];
  let size = 0;
  await forChunks(src, chunkBytes, (c) => {
    whole.update(c);
    chunkDigests.push(sha256(c));
    size += c.length;
  });
  const digest = whole.digest("hex");
  const keys = blobKeys(run, digest);
  await bus.call(["SADD", keys.set, digest]);
  if (await bus.call(["HEXISTS", keys.manifest, "sha256"]) === 1) {
    return { digest, size, sent: false };
  }
  await forChunks(src, chunkBytes, async (c, i) => {
    await bus.call(["SET", keys.chunk(i), c]);
  });
  await bus.call([
    "HSET",
    keys.manifest,
    "size",
    size,
    "chunk_bytes",
    chunkBytes,
    "chunks",
    chunkDigests.length,
    "chunk_sha256",
    chunkDigests.join(","),
    "sha256",
    digest,
  ]);
  return { digest, size, sent: true };
}

/**
 * Publishes `files` (name → path) as a tree; returns the tree's digest and the bytes sent.
 * `digests` collects every blob it uses.
 */
export async function putTree(
  bus: RedisBus,
  run: string,
  files: Record<string, string>,
  o: { chunkBytes?: number; digests?: Set<string> } = {},
): Promise<BlobRef & { sent: number }> {
  const refs: Record<string, string> = {};
  let sent = 0;
  for (const [name, path] of Object.entries(files)) {
    const b = await putBlob(bus, run, { path }, o);
    refs[name] = b.digest;
    o.digests?.add(b.digest);
    if (b.sent) sent += b.size;
  }
  const tree = new TextEncoder().encode(JSON.stringify({ files: refs }));
  const { digest, size } = await putBlob(bus, run, tree, o);
  o.digests?.add(digest);
  return { digest, size, sent };
}

/**
 * Drops every blob of run `run` but those in `keep`: a new session of a run publishes what it
 * needs and clears the rest, so Redis holds one run's worth of blobs, not every session's.
 */
export async function dropBlobsExcept(
  bus: RedisBus,
  run: string,
  keep: ReadonlySet<string>,
): Promise<void> {
  const set = blobKeys(run, "").set;
  const all = (await bus.call(["SMEMBERS", set]) as unknown[] ?? []).map(String);
  for (const d of all) {
    if (keep.has(d)) continue;
    const keys = blobKeys(run, d);
    const chunks = Number(await bus.call(["HGET", keys.manifest, "chunks"]) ?? 0);
    const names = [keys.manifest, ...Array.from({ length: chunks }, (_, i) => keys.chunk(i))];
    for (let i = 0; i < names.length; i += 512) await bus.call(["DEL", ...names.slice(i, i + 512)]);
    await bus.call(["SREM", set, d]);
  }
}

/** What a fetch did: where the blob lies and what crossed the network for it. */
export interface FetchedBlob {
  path: string;
  size: number;
  /** Chunks fetched from Redis now (0: the cache had it). */
  fetched: number;
  /** Chunks found verified in the cache from an earlier, interrupted download. */
  resumed: number;
  chunks: number;
  /** Chunks that were in the cache with a wrong digest and were fetched again. */
  refetched: number;
}

async function fileSha256(path: string): Promise<string | null> {
  let f: Deno.FsFile;
  try {
    f = await Deno.open(path, { read: true });
  } catch {
    return null;
  }
  const h = createHash("sha256");
  try {
    for await (const c of f.readable) h.update(c);
  } catch {
    return null;
  }
  return h.digest("hex");
}

async function writeAtomic(path: string, bytes: Uint8Array): Promise<void> {
  const tmp = `${path}.tmp${Deno.pid}`;
  await Deno.writeFile(tmp, bytes);
  await Deno.rename(tmp, path);
}

const HEX64 = /^[0-9a-f]{64}$/;

/**
 * The blob `digest` of run `run` as a file in `cache`: the cached copy when its digest matches,
 * else downloaded chunk by chunk (resuming from verified chunks of an earlier attempt) and
 * checked whole. A blob missing from Redis or corrupt there is a one-line {@link UserError}.
 */
export async function fetchBlob(
  bus: RedisBus,
  run: string,
  digest: string,
  o: { cache: string },
): Promise<FetchedBlob> {
  if (!HEX64.test(digest)) throw new UserError(`run ${run}: "${digest}" is not a SHA-256 digest`);
  const path = `${o.cache}/blobs/${digest}`;
  for (let attempt = 0;; attempt++) {
    const have = await fileSha256(path);
    if (have === digest) {
      const size = (await Deno.stat(path)).size;
      return { path, size, fetched: 0, resumed: 0, chunks: 0, refetched: 0 };
    }
    if (have !== null) await Deno.remove(path).catch(() => {});
    try {
      return await download(bus, run, digest, path);
    } catch (e) {
      // Two workers sharing one cache: the other finished this blob and removed its chunks
      // under this one. The loop finds its copy (or, once, downloads again).
      if (!(e instanceof Deno.errors.NotFound) || attempt > 0) throw e;
    }
  }
}

async function download(
  bus: RedisBus,
  run: string,
  digest: string,
  path: string,
): Promise<FetchedBlob> {
  const keys = blobKeys(run, digest);
  const m = await bus.hash(keys.manifest);
  if (m.sha256 !== digest) {
    throw new UserError(
      `run ${run}: blob ${digest.slice(0, 12)} is not in Redis at ${bus.target.display} ` +
        `(a new session of the run replaced it, or Redis lost it); start the worker again`,
    );
  }
  const chunks = Number(m.chunks), size = Number(m.size);
  const chunkDigests = m.chunk_sha256.split(",");
  const parts = `${path}.part`;
  await Deno.mkdir(parts, { recursive: true });
  // Test-only: a slow download, so a test can kill a worker in the middle of one.
  const delay = Number(Deno.env.get("ESFLOW_TEST_CHUNK_DELAY_MS") ?? 0);
  const out: FetchedBlob = { path, size, fetched: 0, resumed: 0, chunks, refetched: 0 };
  for (let i = 0; i < chunks; i++) {
    const part = `${parts}/${i}`;
    const cached = await fileSha256(part);
    if (cached === chunkDigests[i]) {
      out.resumed++;
      continue;
    }
    if (cached !== null) out.refetched++;
    let bytes: Uint8Array | null = null;
    // A chunk that arrives damaged is asked for again; twice damaged, Redis's copy is bad.
    for (let attempt = 0; attempt < 2 && bytes === null; attempt++) {
      const got = await bus.callBytes(["GET", keys.chunk(i)]);
      out.fetched++;
      if (got === null) {
        throw new UserError(
          `run ${run}: chunk ${i} of blob ${digest.slice(0, 12)} is gone from Redis at ` +
            `${bus.target.display} (a new session replaced it); start the worker again`,
        );
      }
      if (sha256(got) === chunkDigests[i]) bytes = got;
    }
    if (bytes === null) {
      throw new UserError(
        `run ${run}: chunk ${i} of blob ${digest.slice(0, 12)} in Redis does not match its ` +
          `digest; restart the coordinator so it publishes the run again`,
      );
    }
    await writeAtomic(part, bytes);
    if (delay > 0) await new Promise((r) => setTimeout(r, delay));
  }
  // Whole: the chunks in order, checked against the blob's own digest.
  const tmp = `${path}.tmp${Deno.pid}`;
  const f = await Deno.open(tmp, { write: true, create: true, truncate: true });
  const h = createHash("sha256");
  try {
    for (let i = 0; i < chunks; i++) {
      const c = await Deno.readFile(`${parts}/${i}`);
      h.update(c);
      let w = 0;
      while (w < c.length) w += await f.write(c.subarray(w));
    }
  } finally {
    f.close();
  }
  if (h.digest("hex") !== digest) {
    await Deno.remove(tmp).catch(() => {});
    await Deno.remove(parts, { recursive: true }).catch(() => {});
    throw new UserError(
      `run ${run}: blob ${digest.slice(0, 12)} assembled from Redis does not match its digest; ` +
        `restart the coordinator so it publishes the run again`,
    );
  }
  await Deno.rename(tmp, path);
  await Deno.remove(parts, { recursive: true }).catch(() => {});
  return out;
}

/** A fetched tree: its directory in the cache, and the sum of its blobs' fetches. */
export interface FetchedTree extends Omit<FetchedBlob, "path"> {
  dir: string;
}

/**
 * The tree `digest` of run `run` as a directory of `cache` (`trees/DIGEST/NAME`), its files
 * fetched as {@link fetchBlob} does and linked (or copied) from the blob store.
 */
export async function fetchTree(
  bus: RedisBus,
  run: string,
  digest: string,
  o: { cache: string },
): Promise<FetchedTree> {
  const index = await fetchBlob(bus, run, digest, o);
  const total: FetchedTree = { ...index, dir: `${o.cache}/trees/${digest}` };
  let files: Record<string, string>;
  try {
    files = JSON.parse(await Deno.readTextFile(index.path)).files;
    if (!files || typeof files !== "object") throw new Error("no files");
  } catch {
    throw new UserError(`run ${run}: blob ${digest.slice(0, 12)} is not a tree of files`);
  }
  await Deno.mkdir(total.dir, { recursive: true });
  for (const [name, d] of Object.entries(files)) {
    if (!/^[\w.-]+$/.test(name)) throw new UserError(`run ${run}: tree file name "${name}"`);
    const b = await fetchBlob(bus, run, d, o);
    for (const k of ["size", "fetched", "resumed", "chunks", "refetched"] as const) {
      total[k] += b[k];
    }
    const target = `${total.dir}/${name}`;
    // A hard link to the checked blob is that blob; a copy (no links across devices) is hashed.
    const [t, src] = await Promise.all([Deno.stat(target).catch(() => null), Deno.stat(b.path)]);
    if (t && t.ino !== null && t.ino === src.ino && t.dev === src.dev) continue;
    if (t && (await fileSha256(target)) === d) continue;
    await Deno.remove(target).catch(() => {});
    try {
      await Deno.link(b.path, target);
    } catch {
      await Deno.copyFile(b.path, target);
    }
  }
  return total;
}
