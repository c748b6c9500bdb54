/**
 * What a distributed worker needs besides the esflow checkout, published by the coordinator in
 * Redis as blobs (pipeline/blobs.ts), so a worker on another machine needs no path of the
 * coordinator's: the corpus samples, the files the tokenizer and the model stage read (an HF
 * tokenizer.json, a config.json, an init checkpoint), and, when the coordinator resumed, the
 * checkpoint its ledger starts from.
 *
 * The worker rebuilds the same pipeline from the published text with every file setting pointed
 * at its own cache, resolves it with the published samples instead of the dataset stage, and
 * checks the tokenized data against the coordinator's digest, so a worker can only train on the
 * coordinator's data. A worker that joins late starts from the latest checkpoint the coordinator
 * published (each one it writes, unless `--no-publish-checkpoints`; only the latest stays in
 * Redis) and replays the ledger after it (one update per iteration, no forward); with none
 * published it starts from the initial weights and replays the whole ledger.
 *
 * Meta fields (P meta, pipeline/distributed.ts): `bundle` (JSON {@link RunBundle}),
 * `data_digest`, and `checkpoint` (JSON {iteration, tree}) once the session has published one
 * (a resumed session's first, then each it writes).
 *
 * @module
 */
import { resolve as absolute } from "node:path";
import { UserError } from "../errors.ts";
import type { RedisBus } from "./distributed/bus.ts";
import { type BlobRef, fetchBlob, type FetchedBlob, fetchTree, putBlob, putTree } from "./blobs.ts";
import { loadPipelineText } from "./load.ts";
import { type ResolvedPipeline, resolvePipeline } from "./resolve.ts";
import { resolvePath } from "./stages/dataset.ts";

/** A pipeline setting that names a file or a directory, published as a tree. */
export interface PublishedFile {
  /** The setting: stage and key (tokenizer.path, model.config, model.init). */
  stage: string;
  key: string;
  /** The tree's digest. */
  tree: string;
  /** The file in the tree the setting names; absent: the setting names the directory. */
  file?: string;
}

/** What the coordinator publishes for workers to bootstrap from. */
export interface RunBundle {
  /** The corpus samples, a JSON array of strings (UTF-8). */
  texts: BlobRef;
  files: PublishedFile[];
}

/** The latest checkpoint of the session in Redis: θ at `iteration`, the ledger's start. */
export interface PublishedCheckpoint {
  iteration: number;
  tree: string;
}

/** The top-level regular files of a checkpoint dir, by name. */
async function dirFiles(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile) out[e.name] = `${dir}/${e.name}`;
  }
  return out;
}

/** The file settings of a resolved pipeline, with the files each one reads. */
function fileSettings(
  run: ResolvedPipeline,
): { stage: string; key: string; files: () => Promise<Record<string, string>>; file?: string }[] {
  const { spec, loaded } = run;
  const out: ReturnType<typeof fileSettings> = [];
  const tok = run.tokenizer.files;
  if (tok?.kind === "hf" && typeof (spec.tokenizer as { path?: unknown }).path === "string") {
    out.push({
      stage: "tokenizer",
      key: "path",
      files: () =>
        Promise.resolve({
          "tokenizer.json": tok.tokenizerJson,
          ...(tok.config ? { "tokenizer_config.json": tok.config } : {}),
        }),
    });
  }
  if (spec.model.type === "qwen3") {
    const m = spec.model as { config?: string; init?: string };
    if (m.config !== undefined) {
      const path = resolvePath(m.config, loaded);
      out.push({
        stage: "model",
        key: "config",
        file: "config.json",
        files: () => Promise.resolve({ "config.json": path }),
      });
    }
    if (m.init !== undefined && m.init !== "random") {
      const dir = resolvePath(m.init, loaded);
      out.push({ stage: "model", key: "init", files: () => dirFiles(dir) });
    }
  }
  return out;
}

/**
 * Publishes the samples and the files of `run` as blobs of run `name`; returns the bundle and
 * the digests it uses (for {@link dropBlobsExcept}).
 */
export async function publishBundle(
  bus: RedisBus,
  name: string,
  run: ResolvedPipeline,
): Promise<{ bundle: RunBundle; digests: Set<string>; sent: number }> {
  const digests = new Set<string>();
  let sent = 0;
  const texts = await putBlob(bus, name, new TextEncoder().encode(JSON.stringify(run.texts)));
  digests.add(texts.digest);
  if (texts.sent) sent += texts.size;
  const files: PublishedFile[] = [];
  for (const f of fileSettings(run)) {
    const tree = await putTree(bus, name, await f.files(), { digests });
    sent += tree.sent;
    files.push({
      stage: f.stage,
      key: f.key,
      tree: tree.digest,
      ...(f.file ? { file: f.file } : {}),
    });
  }
  return { bundle: { texts: { digest: texts.digest, size: texts.size }, files }, digests, sent };
}

/**
 * Publishes checkpoint dir `dir` (θ at `iteration`) for workers that join: a resumed session's
 * first checkpoint, and each one the coordinator writes after. Returns the digests it uses, so
 * the next one can drop them ({@link dropBlobsExcept}).
 */
export async function publishCheckpoint(
  bus: RedisBus,
  name: string,
  o: { dir: string; iteration: number },
): Promise<PublishedCheckpoint & { sent: number; digests: Set<string> }> {
  const digests = new Set<string>();
  const tree = await putTree(bus, name, await dirFiles(o.dir), { digests });
  return { iteration: o.iteration, tree: tree.digest, sent: tree.sent, digests };
}

/** Bytes and chunks a worker's bootstrap moved. */
export interface BootstrapCost {
  /** Bytes of the blobs it needed. */
  bytes: number;
  /** Chunks fetched from Redis now, found from an interrupted download, fetched again. */
  fetched: number;
  resumed: number;
  refetched: number;
  chunks: number;
}

function add(cost: BootstrapCost, b: Omit<FetchedBlob, "path">): void {
  cost.bytes += b.size;
  cost.fetched += b.fetched;
  cost.resumed += b.resumed;
  cost.refetched += b.refetched;
  cost.chunks += b.chunks;
}

/**
 * Rebuilds the coordinator's pipeline on a worker from the meta of the run in Redis: the
 * published text, the samples and every file from the cache `cache` (fetched as needed).
 */
export async function bootstrapPipeline(
  bus: RedisBus,
  meta: Record<string, string>,
  o: { cache: string; cost: BootstrapCost },
): Promise<ResolvedPipeline> {
  const name = meta.name;
  if (!meta.bundle) {
    throw new UserError(
      `run ${name} in Redis has no published bundle: its coordinator runs an older esflow; ` +
        `run the same esflow everywhere`,
    );
  }
  const bundle = JSON.parse(meta.bundle) as RunBundle;
  const cache = absolute(o.cache);
  const textsBlob = await fetchBlob(bus, name, bundle.texts.digest, { cache });
  add(o.cost, textsBlob);
  const texts = JSON.parse(await Deno.readTextFile(textsBlob.path)) as string[];
  const loaded = loadPipelineText(meta.pipeline, {
    file: meta.file,
    overrides: { iterations: Number(meta.iterations), seed: Number(meta.seed), out: meta.out },
  });
  for (const f of bundle.files) {
    const tree = await fetchTree(bus, name, f.tree, { cache });
    add(o.cost, tree);
    const settings = (loaded.spec as unknown as Record<string, Record<string, unknown>>)[f.stage];
    settings[f.key] = f.file ? `${tree.dir}/${f.file}` : tree.dir;
  }
  return await resolvePipeline(loaded, { texts });
}

/** The session's published checkpoint (meta `checkpoint`) as a directory of the cache. */
export async function fetchCheckpoint(
  bus: RedisBus,
  meta: Record<string, string>,
  o: { cache: string; cost: BootstrapCost },
): Promise<{ dir: string; iteration: number } | null> {
  if (!meta.checkpoint) return null;
  const ck = JSON.parse(meta.checkpoint) as PublishedCheckpoint;
  const tree = await fetchTree(bus, meta.name, ck.tree, { cache: absolute(o.cache) });
  add(o.cost, tree);
  return { dir: tree.dir, iteration: ck.iteration };
}

/** The default scratch dir of a worker: $XDG_CACHE_HOME/esflow/worker or ~/.cache/esflow/worker. */
export function defaultWorkerCache(): string {
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  const home = Deno.env.get("HOME");
  if (xdg) return `${xdg}/esflow/worker`;
  if (home) return `${home}/.cache/esflow/worker`;
  throw new UserError("no HOME or XDG_CACHE_HOME for the worker's cache; give --cache DIR");
}
