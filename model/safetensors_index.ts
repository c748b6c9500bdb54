/**
 * Sharded safetensors checkpoints: `model.safetensors.index.json` beside shard files.
 *
 * The index is {"metadata": {"total_size": bytes of tensor data}, "weight_map": {name: file}},
 * as transformers' save_pretrained writes it. Shards are named
 * `model-00001-of-00003.safetensors`; a model that fits in one shard is written as plain
 * `model.safetensors` with no index, as transformers does.
 *
 * @module
 */
import { UserError } from "../errors.ts";
import {
  collectTensors,
  openSafetensors,
  parentDir,
  type SafetensorsDtype,
  SafetensorsWriter,
  syncDir,
  tempPathBeside,
  tensorBytes,
  type TensorEntry,
  type TensorLayout,
  type TensorSource,
  type TensorStream,
} from "./safetensors.ts";

/** The index file's name, for the default "model" prefix. */
export const INDEX_FILE = "model.safetensors.index.json";

/** transformers' default largest shard: 5 GB. */
export const DEFAULT_MAX_SHARD_BYTES = 5_000_000_000;

function joinPath(dir: string, name: string): string {
  return dir.endsWith("/") ? dir + name : `${dir}/${name}`;
}

/** A set of shard files read through their index, as one {@link TensorSource}. */
class ShardedSource implements TensorSource {
  readonly tensors: ReadonlyMap<string, TensorEntry>;

  constructor(
    readonly path: string,
    readonly metadata: Readonly<Record<string, string>>,
    private readonly owner: ReadonlyMap<string, TensorSource>,
    private readonly shards: readonly TensorSource[],
  ) {
    const entries: [string, TensorEntry][] = [];
    for (const [name, source] of owner) entries.push([name, source.tensors.get(name)!]);
    entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    this.tensors = new Map(entries);
  }

  read(name: string): Promise<Float32Array> {
    const source = this.owner.get(name);
    if (!source) {
      return Promise.reject(
        new UserError(`${this.path}: no tensor named "${name}"; check the name`),
      );
    }
    return source.read(name);
  }

  close(): void {
    for (const shard of this.shards) shard.close();
  }
}

/**
 * Opens a sharded checkpoint through its index file. Reads the index and every shard's header
 * (not their data) and checks that each tensor in the weight map is in its shard and that no
 * shard holds a tensor the map doesn't name. Throws a one-line {@link UserError} naming the
 * file at fault.
 */
export async function openSafetensorsIndex(indexPath: string): Promise<TensorSource> {
  let text: string;
  try {
    text = await Deno.readTextFile(indexPath);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new UserError(`${indexPath}: file does not exist; check the path`);
    }
    throw err;
  }
  const fail = (fault: string): never => {
    throw new UserError(`${indexPath}: ${fault}; re-save the checkpoint`);
  };
  let index: unknown;
  try {
    index = JSON.parse(text);
  } catch (err) {
    fail(`not valid JSON (${err instanceof Error ? err.message.split("\n")[0] : err})`);
  }
  if (index === null || typeof index !== "object" || Array.isArray(index)) {
    fail("not a JSON object");
  }
  const { weight_map: weightMap, metadata: rawMeta } = index as Record<string, unknown>;
  if (weightMap === null || typeof weightMap !== "object" || Array.isArray(weightMap)) {
    fail(`"weight_map" is missing or not an object of tensor name to file`);
  }
  const metadata: Record<string, string> = {};
  if (rawMeta !== undefined && rawMeta !== null) {
    if (typeof rawMeta !== "object" || Array.isArray(rawMeta)) fail(`"metadata" is not an object`);
    // total_size is a number in transformers' files; keep every value as text.
    for (const [k, v] of Object.entries(rawMeta as Record<string, unknown>)) {
      metadata[k] = String(v);
    }
  }
  const dir = parentDir(indexPath);
  const byFile = new Map<string, string[]>();
  for (const [name, file] of Object.entries(weightMap as Record<string, unknown>)) {
    if (
      typeof file !== "string" || file === "" || file.startsWith("/") ||
      file.split("/").includes("..")
    ) {
      fail(
        `"weight_map" entry for "${name}" is ${JSON.stringify(file)}, not a file in this directory`,
      );
    }
    const names = byFile.get(file as string) ?? [];
    names.push(name);
    byFile.set(file as string, names);
  }
  if (byFile.size === 0) fail(`"weight_map" is empty`);
  const shards: TensorSource[] = [];
  const owner = new Map<string, TensorSource>();
  try {
    for (const [file, names] of byFile) {
      const shard = await openSafetensors(joinPath(dir, file));
      shards.push(shard);
      for (const name of names) {
        if (!shard.tensors.has(name)) {
          fail(`"weight_map" puts tensor "${name}" in ${file}, which does not hold it`);
        }
        owner.set(name, shard);
      }
      for (const name of shard.tensors.keys()) {
        if ((weightMap as Record<string, unknown>)[name] !== file) {
          fail(`shard ${file} holds tensor "${name}", which "weight_map" does not assign to it`);
        }
      }
    }
  } catch (err) {
    for (const shard of shards) shard.close();
    throw err;
  }
  return new ShardedSource(indexPath, metadata, owner, shards);
}

/** Options of {@link writeShardedSafetensors}. */
export interface WriteShardedOptions {
  /** Element type stored; default "F32". */
  dtype?: SafetensorsDtype;
  /** Largest shard's tensor data in bytes; default 5 GB. A bigger single tensor gets a shard alone. */
  maxShardBytes?: number;
  /** Every tensor's name and shape, in the order to pack them; without it the stream is collected. */
  layout?: readonly TensorLayout[];
  /** File name prefix; default "model". */
  prefix?: string;
}

/** Groups tensors into shards in order, each shard's data at most `maxBytes` unless one tensor is bigger. */
export function planShards(
  layout: readonly TensorLayout[],
  options: { dtype: SafetensorsDtype; maxShardBytes: number },
): TensorLayout[][] {
  const shards: TensorLayout[][] = [];
  let current: TensorLayout[] = [];
  let bytes = 0;
  for (const t of layout) {
    const size = tensorBytes(t.shape, options.dtype);
    if (current.length > 0 && bytes + size > options.maxShardBytes) {
      shards.push(current);
      current = [];
      bytes = 0;
    }
    current.push(t);
    bytes += size;
  }
  if (current.length > 0 || shards.length === 0) shards.push(current);
  return shards;
}

/**
 * Writes tensors into `dir` as shards of at most `maxShardBytes` plus the index, each file
 * atomically (temp file, fsync, rename). The index is renamed into place last, so a reader that
 * goes through it never sees a partial set. With a single shard it writes `model.safetensors`
 * and no index. Shards from an earlier save with another count are not removed: save into a
 * fresh directory (as saveCheckpoint does). Returns the files written, relative to `dir`.
 */
export async function writeShardedSafetensors(
  dir: string,
  tensors: TensorStream,
  options: WriteShardedOptions = {},
): Promise<{ files: string[]; totalBytes: number }> {
  const dtype = options.dtype ?? "F32";
  const prefix = options.prefix ?? "model";
  const maxShardBytes = options.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES;
  if (!(maxShardBytes > 0)) throw new Error(`maxShardBytes must be > 0, got ${maxShardBytes}`);
  let stream = tensors;
  let layout = options.layout;
  if (!layout) {
    const all = await collectTensors(tensors);
    layout = all;
    stream = all;
  }
  const plan = planShards(layout, { dtype, maxShardBytes });
  const count = plan.length;
  const pad = (i: number) => String(i).padStart(5, "0");
  const names = count === 1
    ? [`${prefix}.safetensors`]
    : plan.map((_, i) => `${prefix}-${pad(i + 1)}-of-${pad(count)}.safetensors`);
  const writers: SafetensorsWriter[] = [];
  const writerOf = new Map<string, SafetensorsWriter>();
  const weightMap: Record<string, string> = {};
  try {
    for (let i = 0; i < count; i++) {
      const writer = await SafetensorsWriter.create(joinPath(dir, names[i]), plan[i], { dtype });
      writers.push(writer);
      for (const t of plan[i]) {
        writerOf.set(t.name, writer);
        weightMap[t.name] = names[i];
      }
    }
    for await (const t of stream) {
      const writer = writerOf.get(t.name);
      if (!writer) throw new Error(`tensor "${t.name}" is not in the planned layout`);
      await writer.write(t);
    }
  } catch (err) {
    for (const w of writers) await w.abort();
    throw err;
  }
  let totalBytes = 0;
  for (let i = 0; i < writers.length; i++) {
    try {
      await writers[i].commit();
    } catch (err) {
      for (const w of writers.slice(i + 1)) await w.abort();
      throw err;
    }
    totalBytes += writers[i].dataBytes;
  }
  if (count === 1) return { files: names, totalBytes };
  const sortedMap: Record<string, string> = {};
  for (const name of Object.keys(weightMap).sort()) sortedMap[name] = weightMap[name];
  const indexName = prefix === "model" ? INDEX_FILE : `${prefix}.safetensors.index.json`;
  const indexPath = joinPath(dir, indexName);
  const text =
    JSON.stringify({ metadata: { total_size: totalBytes }, weight_map: sortedMap }, null, 2) + "\n";
  await writeTextAtomic(indexPath, text);
  return { files: [...names, indexName], totalBytes };
}

/** Writes a text file atomically: temp file beside it, fsync, rename, fsync the directory. */
export async function writeTextAtomic(path: string, text: string | Uint8Array): Promise<void> {
  const temp = tempPathBeside(path);
  const file = await Deno.open(temp, { write: true, createNew: true });
  try {
    const bytes = typeof text === "string" ? new TextEncoder().encode(text) : text;
    let done = 0;
    while (done < bytes.length) done += await file.write(bytes.subarray(done));
    await file.sync();
  } catch (err) {
    file.close();
    await Deno.remove(temp).catch(() => {});
    throw err;
  }
  file.close();
  try {
    await Deno.rename(temp, path);
  } catch (err) {
    await Deno.remove(temp).catch(() => {});
    throw err;
  }
  await syncDir(parentDir(path));
}
