/**
 * A strict safetensors reader and writer for F32, BF16 and F16 tensors.
 *
 * File layout: u64 little-endian header length N, N bytes of UTF-8 JSON, then the data buffer.
 * The JSON maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} with offsets
 * relative to the data buffer, plus an optional "__metadata__" map of strings.
 *
 * Reading is lazy: {@link openSafetensors} reads only the header; `read(name)` seeks to and reads
 * that one tensor. A 64 GB checkpoint is never held in memory whole.
 *
 * Writing streams: the header is planned from the tensor layout (names and shapes), written
 * first, then each tensor's bytes are written at its offset as it arrives, in any order. Files
 * are written to a temporary name in the same directory, fsynced, and renamed into place.
 *
 * @module
 */
import { UserError } from "../errors.ts";

/** Element types esflow reads and writes. */
export type SafetensorsDtype = "F32" | "BF16" | "F16";

/** Bytes per element of each supported dtype. */
export const DTYPE_BYTES: Readonly<Record<SafetensorsDtype, number>> = { F32: 4, BF16: 2, F16: 2 };

/** The safetensors header may not exceed this many bytes (the reference implementation's limit). */
export const MAX_HEADER_BYTES = 100_000_000;

/** A tensor as the header describes it. */
export interface TensorEntry {
  /** How its elements are stored. */
  dtype: SafetensorsDtype;
  /** Its dimensions, outermost first. */
  shape: number[];
}

/** A tensor's place in its file: `begin` and `end` are byte offsets into the data buffer. */
export interface TensorLocation extends TensorEntry {
  begin: number;
  end: number;
}

/** Something tensors can be read from by name: one safetensors file, or a sharded set. */
export interface TensorSource {
  /** The file (or index file) the tensors come from, for messages. */
  readonly path: string;
  /** Every tensor, by name, in name order. */
  readonly tensors: ReadonlyMap<string, TensorEntry>;
  /** The "__metadata__" string map ({} when absent). */
  readonly metadata: Readonly<Record<string, string>>;
  /** Reads one tensor, converted to f32. Reads only that tensor's bytes. */
  read(name: string): Promise<Float32Array>;
  /** Releases the open file handles. */
  close(): void;
}

/** A tensor's name and shape, without data: what a writer plans its header from. */
export interface TensorLayout {
  /** Its HF name, e.g. "model.layers.0.mlp.up_proj.weight". */
  name: string;
  /** Its dimensions, outermost first. */
  shape: readonly number[];
}

/** A tensor with its f32 data, row-major. */
export interface TensorData extends TensorLayout {
  /** The elements, row-major. */
  data: Float32Array;
}

/** Tensors handed to a writer one at a time. */
export type TensorStream = Iterable<TensorData> | AsyncIterable<TensorData>;

/** Elements in a tensor of this shape (1 for a scalar). */
export function numElements(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Bytes a tensor of this shape and dtype occupies in the data buffer. */
export function tensorBytes(shape: readonly number[], dtype: SafetensorsDtype): number {
  return numElements(shape) * DTYPE_BYTES[dtype];
}

// Typed-array views below reinterpret file bytes in host order; safetensors is little-endian.
const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

// Conversions run in chunks of this many elements so a BF16 read or write never holds a second
// full-size copy of a multi-GB tensor.
const CHUNK_ELEMENTS = 1 << 20;

function isDtype(value: unknown): value is SafetensorsDtype {
  return value === "F32" || value === "BF16" || value === "F16";
}

function isCount(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

function showShape(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

/**
 * Validates a parsed safetensors header against the data buffer's length and returns each
 * tensor's location, in name order. Throws a one-line {@link UserError} naming `file` for any
 * fault: non-object JSON, unknown dtype, bad shape or offsets, a size that does not match the
 * shape, offsets that overlap or leave a gap, or a buffer that is longer or shorter than the
 * tensors need.
 */
export function validateHeader(
  header: unknown,
  options: { file: string; dataBytes: number },
): { tensors: Map<string, TensorLocation>; metadata: Record<string, string> } {
  const { file, dataBytes } = options;
  const fail = (fault: string): never => {
    throw new UserError(`${file}: ${fault}; the file is not valid safetensors, re-save it`);
  };
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    fail("the header is not a JSON object");
  }
  const metadata: Record<string, string> = {};
  const found: [string, TensorLocation][] = [];
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
        fail(`"__metadata__" is not an object of strings`);
      }
      for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
        if (typeof v !== "string") fail(`"__metadata__" value for "${k}" is not a string`);
        metadata[k] = v as string;
      }
      continue;
    }
    if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
      fail(`tensor "${name}" is not an object with dtype, shape and data_offsets`);
    }
    const entry = raw as Record<string, unknown>;
    const { dtype, shape, data_offsets: offsets } = entry;
    if (!isDtype(dtype)) {
      fail(
        `tensor "${name}" has dtype ${JSON.stringify(dtype)}, which esflow does not read ` +
          `(F32, BF16 or F16)`,
      );
    }
    if (!Array.isArray(shape) || !shape.every(isCount)) {
      fail(`tensor "${name}" has shape ${JSON.stringify(shape)}, not a list of counts`);
    }
    if (
      !Array.isArray(offsets) || offsets.length !== 2 || !isCount(offsets[0]) ||
      !isCount(offsets[1]) || offsets[1] < offsets[0]
    ) {
      fail(`tensor "${name}" has data_offsets ${JSON.stringify(offsets)}, not [begin, end]`);
    }
    const [begin, end] = offsets as [number, number];
    const dims = shape as number[];
    const want = tensorBytes(dims, dtype as SafetensorsDtype);
    if (end - begin !== want) {
      fail(
        `tensor "${name}" spans ${end - begin} bytes but ${dtype} ${showShape(dims)} needs ${want}`,
      );
    }
    found.push([name, { dtype: dtype as SafetensorsDtype, shape: dims, begin, end }]);
  }
  // Sorted by position, the tensors must tile the data buffer from 0 with no gap or overlap.
  const byOffset = found.slice().sort((a, b) => a[1].begin - b[1].begin || a[1].end - b[1].end);
  let cursor = 0;
  for (const [name, loc] of byOffset) {
    if (loc.begin < cursor) {
      fail(`tensor "${name}" at byte ${loc.begin} overlaps the tensor before it`);
    }
    if (loc.begin > cursor) {
      fail(`gap in the data buffer at bytes ${cursor}..${loc.begin} before tensor "${name}"`);
    }
    cursor = loc.end;
  }
  if (cursor !== dataBytes) {
    fail(
      `the tensors end at data byte ${cursor} but the data buffer holds ${dataBytes} bytes ` +
        `(${cursor < dataBytes ? "trailing bytes" : "file truncated"})`,
    );
  }
  found.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return { tensors: new Map(found), metadata };
}

/** Reads exactly `buf.length` bytes at `position`, or throws naming `file`. */
async function readExactly(
  file: Deno.FsFile,
  buf: Uint8Array,
  options: { position: number; path: string },
): Promise<void> {
  await file.seek(options.position, Deno.SeekMode.Start);
  let done = 0;
  while (done < buf.length) {
    const n = await file.read(buf.subarray(done));
    if (n === null) {
      throw new UserError(
        `${options.path}: file ended at byte ${options.position + done} while reading ` +
          `${buf.length} bytes at ${options.position}; the file is truncated, re-save it`,
      );
    }
    done += n;
  }
}

/** Writes all of `bytes` at the file's current position. */
async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.length) done += await file.write(bytes.subarray(done));
}

/** One open safetensors file; see {@link openSafetensors}. */
class SafetensorsFile implements TensorSource {
  readonly tensors: ReadonlyMap<string, TensorEntry>;
  // One handle, one seek position: reads are queued so concurrent read() calls don't interleave.
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;

  constructor(
    readonly path: string,
    readonly metadata: Readonly<Record<string, string>>,
    readonly locations: ReadonlyMap<string, TensorLocation>,
    private readonly file: Deno.FsFile,
    private readonly dataStart: number,
  ) {
    this.tensors = new Map(
      [...locations].map(([name, loc]) => [name, { dtype: loc.dtype, shape: loc.shape }]),
    );
  }

  read(name: string): Promise<Float32Array> {
    const task = this.#queue.then(() => this.#read(name));
    this.#queue = task.catch(() => {});
    return task;
  }

  async #read(name: string): Promise<Float32Array> {
    if (this.#closed) throw new Error(`${this.path}: read("${name}") after close()`);
    const loc = this.locations.get(name);
    if (!loc) throw new UserError(`${this.path}: no tensor named "${name}"; check the name`);
    const count = numElements(loc.shape);
    const out = new Float32Array(count);
    const position = this.dataStart + loc.begin;
    if (loc.dtype === "F32") {
      await readExactly(this.file, new Uint8Array(out.buffer), { position, path: this.path });
      return out;
    }
    // BF16 and F16: two bytes per element, converted a chunk at a time.
    const chunk = new Uint8Array(2 * Math.min(count, CHUNK_ELEMENTS));
    const outBits = new Uint32Array(out.buffer);
    for (let start = 0; start < count; start += CHUNK_ELEMENTS) {
      const n = Math.min(CHUNK_ELEMENTS, count - start);
      const bytes = chunk.subarray(0, 2 * n);
      await readExactly(this.file, bytes, { position: position + 2 * start, path: this.path });
      if (loc.dtype === "BF16") {
        // bfloat16 is the top half of an f32: shift its bits back into place.
        const half = new Uint16Array(bytes.buffer, 0, n);
        for (let i = 0; i < n; i++) outBits[start + i] = half[i] << 16;
      } else {
        out.set(new Float16Array(bytes.buffer, 0, n), start);
      }
    }
    return out;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.file.close();
  }
}

/**
 * Opens a safetensors file and reads and validates its header only; tensors are read on demand
 * with `read(name)`. Throws a one-line {@link UserError} naming the file when it is missing,
 * truncated, has an oversized or invalid header, or fails {@link validateHeader}.
 */
export async function openSafetensors(path: string): Promise<
  TensorSource & {
    readonly locations: ReadonlyMap<string, TensorLocation>;
  }
> {
  if (!HOST_IS_LITTLE_ENDIAN) {
    throw new Error("esflow's safetensors reader needs a little-endian host");
  }
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new UserError(`${path}: file does not exist; check the path`);
    }
    throw err;
  }
  try {
    const fileBytes = (await file.stat()).size;
    if (fileBytes < 8) {
      throw new UserError(
        `${path}: file is ${fileBytes} bytes, shorter than the 8-byte header length; ` +
          `the file is truncated or not safetensors, re-save it`,
      );
    }
    const prefix = new Uint8Array(8);
    await readExactly(file, prefix, { position: 0, path });
    const headerBytes = new DataView(prefix.buffer).getBigUint64(0, true);
    if (headerBytes > BigInt(MAX_HEADER_BYTES)) {
      throw new UserError(
        `${path}: header length ${headerBytes} exceeds the ${MAX_HEADER_BYTES}-byte limit; ` +
          `the file is corrupt or not safetensors, re-save it`,
      );
    }
    const n = Number(headerBytes);
    if (8 + n > fileBytes) {
      throw new UserError(
        `${path}: header length ${n} is larger than the ${fileBytes - 8} bytes after it; ` +
          `the file is truncated or not safetensors, re-save it`,
      );
    }
    const raw = new Uint8Array(n);
    await readExactly(file, raw, { position: 8, path });
    let header: unknown;
    try {
      header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(raw));
    } catch (err) {
      const why = err instanceof Error ? err.message.split("\n")[0] : String(err);
      throw new UserError(`${path}: header is not valid UTF-8 JSON (${why}); re-save the file`);
    }
    const { tensors, metadata } = validateHeader(header, {
      file: path,
      dataBytes: fileBytes - 8 - n,
    });
    return new SafetensorsFile(path, metadata, tensors, file, 8 + n);
  } catch (err) {
    file.close();
    throw err;
  }
}

/** A temporary path beside `path`, in the same directory so that rename is atomic. */
export function tempPathBeside(path: string): string {
  const slash = path.lastIndexOf("/");
  const dir = slash < 0 ? "" : path.slice(0, slash + 1);
  const base = path.slice(slash + 1);
  const tag = crypto.getRandomValues(new Uint32Array(1))[0].toString(16);
  return `${dir}.${base}.${Deno.pid}-${tag}.tmp`;
}

/** The directory holding `path` ("." for a bare name). */
export function parentDir(path: string): string {
  const trimmed = path.replace(/\/+$/, "");
  const slash = trimmed.lastIndexOf("/");
  if (slash < 0) return ".";
  return slash === 0 ? "/" : trimmed.slice(0, slash);
}

/**
 * Flushes a directory's entries (a rename into it) to disk. Some platforms and filesystems can't
 * open or fsync a directory; there the rename is as durable as the OS makes it, so failures here
 * are ignored on purpose.
 */
export async function syncDir(dir: string): Promise<void> {
  let handle: Deno.FsFile | undefined;
  try {
    handle = await Deno.open(dir, { read: true });
    await handle.sync();
  } catch {
    // Not supported here (e.g. Windows, some network filesystems): nothing more we can do.
  } finally {
    handle?.close();
  }
}

function checkLayout(layout: readonly TensorLayout[]): void {
  const seen = new Set<string>();
  for (const { name, shape } of layout) {
    if (name === "__metadata__" || name === "") throw new Error(`invalid tensor name "${name}"`);
    if (seen.has(name)) throw new Error(`tensor "${name}" appears twice`);
    if (!shape.every(isCount)) throw new Error(`tensor "${name}" has shape ${showShape(shape)}`);
    seen.add(name);
  }
}

/**
 * Writes one safetensors file whose tensors are known up front by name and shape; their data is
 * written as it arrives, in any order. Used as: `const w = await SafetensorsWriter.create(...)`,
 * `await w.write(t)` for each tensor, then `await w.commit()` (or `await w.abort()`).
 * Until commit the data lives under a temporary name beside `path`.
 */
export class SafetensorsWriter {
  readonly #written = new Set<string>();
  #scratch?: Uint8Array;

  private constructor(
    /** The final path. */
    readonly path: string,
    private readonly tempPath: string,
    private readonly file: Deno.FsFile,
    /** Where each tensor goes, by name. */
    readonly locations: ReadonlyMap<string, TensorLocation>,
    private readonly dataStart: number,
  ) {}

  /**
   * Plans the header (tensors sorted by name, offsets in that order, `__metadata__` with
   * format "pt" plus `metadata`, JSON padded with spaces to a multiple of 8), creates the
   * temporary file at its full size and writes the header.
   */
  static async create(
    path: string,
    layout: readonly TensorLayout[],
    options: { dtype?: SafetensorsDtype; metadata?: Record<string, string> } = {},
  ): Promise<SafetensorsWriter> {
    if (!HOST_IS_LITTLE_ENDIAN) {
      throw new Error("esflow's safetensors writer needs a little-endian host");
    }
    const dtype = options.dtype ?? "F32";
    if (!isDtype(dtype)) throw new Error(`cannot write dtype ${dtype}`);
    checkLayout(layout);
    const sorted = layout.slice().sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const header: Record<string, unknown> = {
      __metadata__: { ...options.metadata, format: "pt" },
    };
    const locations = new Map<string, TensorLocation>();
    let offset = 0;
    for (const { name, shape } of sorted) {
      const end = offset + tensorBytes(shape, dtype);
      header[name] = { dtype, shape: [...shape], data_offsets: [offset, end] };
      locations.set(name, { dtype, shape: [...shape], begin: offset, end });
      offset = end;
    }
    let json = new TextEncoder().encode(JSON.stringify(header));
    const padded = Math.ceil(json.length / 8) * 8;
    if (padded > MAX_HEADER_BYTES) {
      throw new Error(`${path}: header would exceed ${MAX_HEADER_BYTES} bytes`);
    }
    if (padded !== json.length) {
      const withSpaces = new Uint8Array(padded).fill(0x20);
      withSpaces.set(json);
      json = withSpaces;
    }
    const prefix = new Uint8Array(8);
    new DataView(prefix.buffer).setBigUint64(0, BigInt(json.length), true);
    const tempPath = tempPathBeside(path);
    const file = await Deno.open(tempPath, { write: true, createNew: true });
    try {
      await file.truncate(8 + json.length + offset);
      await writeAll(file, prefix);
      await writeAll(file, json);
    } catch (err) {
      file.close();
      await Deno.remove(tempPath).catch(() => {});
      throw err;
    }
    return new SafetensorsWriter(path, tempPath, file, locations, 8 + json.length);
  }

  /** Bytes of tensor data in the file (excluding the header). */
  get dataBytes(): number {
    let total = 0;
    for (const loc of this.locations.values()) total += loc.end - loc.begin;
    return total;
  }

  /** Writes one planned tensor's data, converted to the file's dtype. */
  async write(tensor: TensorData): Promise<void> {
    const { name, shape, data } = tensor;
    const loc = this.locations.get(name);
    if (!loc) throw new Error(`${this.path}: tensor "${name}" is not in the planned layout`);
    if (this.#written.has(name)) throw new Error(`${this.path}: tensor "${name}" written twice`);
    if (shape.length !== loc.shape.length || shape.some((d, i) => d !== loc.shape[i])) {
      throw new Error(
        `${this.path}: tensor "${name}" has shape ${showShape(shape)}, planned ${
          showShape(loc.shape)
        }`,
      );
    }
    const count = numElements(shape);
    if (data.length !== count) {
      throw new Error(
        `${this.path}: tensor "${name}" has ${data.length} values, shape needs ${count}`,
      );
    }
    await this.file.seek(this.dataStart + loc.begin, Deno.SeekMode.Start);
    if (loc.dtype === "F32") {
      await writeAll(this.file, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    } else {
      this.#scratch ??= new Uint8Array(2 * CHUNK_ELEMENTS);
      for (let start = 0; start < count; start += CHUNK_ELEMENTS) {
        const n = Math.min(CHUNK_ELEMENTS, count - start);
        const part = data.subarray(start, start + n);
        if (loc.dtype === "BF16") {
          f32ToBf16Bits(part, new Uint16Array(this.#scratch.buffer, 0, n));
        } else {
          new Float16Array(this.#scratch.buffer, 0, n).set(part);
        }
        await writeAll(this.file, this.#scratch.subarray(0, 2 * n));
      }
    }
    this.#written.add(name);
  }

  /**
   * Checks every planned tensor was written, fsyncs, closes and renames the file into place,
   * then fsyncs its directory. On failure the temporary file is removed.
   */
  async commit(): Promise<void> {
    const missing = [...this.locations.keys()].filter((name) => !this.#written.has(name));
    if (missing.length > 0) {
      await this.abort();
      throw new Error(
        `${this.path}: ${missing.length} planned tensors were never written (first: "${
          missing[0]
        }")`,
      );
    }
    try {
      await this.file.sync();
      this.file.close();
      await Deno.rename(this.tempPath, this.path);
    } catch (err) {
      await this.abort();
      throw err;
    }
    await syncDir(parentDir(this.path));
  }

  /** Closes and deletes the temporary file; the final path is untouched. */
  async abort(): Promise<void> {
    try {
      this.file.close();
    } catch {
      // Already closed by a failed commit.
    }
    await Deno.remove(this.tempPath).catch(() => {});
  }
}

/**
 * Converts f32 values to bfloat16 bit patterns with round-to-nearest-even. NaN stays NaN (its
 * sign and top payload bits kept, quiet bit set); values past the bf16 range round to ±Infinity.
 */
export function f32ToBf16Bits(
  src: Float32Array,
  dst: Uint16Array = new Uint16Array(src.length),
): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) {
    const b = bits[i];
    if ((b & 0x7fffffff) > 0x7f800000) {
      // NaN: plain truncation could clear every payload bit and turn it into Infinity.
      dst[i] = (b >>> 16) | 0x0040;
    } else {
      dst[i] = (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
    }
  }
  return dst;
}

/** Widens bfloat16 bit patterns to f32 (exact). */
export function bf16BitsToF32(
  src: Uint16Array,
  dst: Float32Array = new Float32Array(src.length),
): Float32Array {
  const bits = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
  for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
  return dst;
}

/** Collects a stream's tensors into an array, for writers that need every shape first. */
export async function collectTensors(tensors: TensorStream): Promise<TensorData[]> {
  const out: TensorData[] = [];
  for await (const t of tensors) out.push(t);
  return out;
}

/** Options of {@link writeSafetensors}. */
export interface WriteSafetensorsOptions {
  /** Element type stored in the file; default "F32". */
  dtype?: SafetensorsDtype;
  /**
   * Every tensor's name and shape, known before the data. With it the tensors stream straight
   * to disk one at a time; without it the stream is collected first to learn the shapes.
   */
  layout?: readonly TensorLayout[];
  /** Extra "__metadata__" entries; "format": "pt" is always written. */
  metadata?: Record<string, string>;
}

/**
 * Writes `tensors` as one safetensors file at `path`, atomically: a temporary file in the same
 * directory, fsynced, then renamed over `path`. Returns the number of data bytes written.
 */
export async function writeSafetensors(
  path: string,
  tensors: TensorStream,
  options: WriteSafetensorsOptions = {},
): Promise<{ dataBytes: number }> {
  let stream = tensors;
  let layout = options.layout;
  if (!layout) {
    const all = await collectTensors(tensors);
    layout = all;
    stream = all;
  }
  const writer = await SafetensorsWriter.create(path, layout, options);
  try {
    for await (const t of stream) await writer.write(t);
  } catch (err) {
    await writer.abort();
    throw err;
  }
  await writer.commit();
  return { dataBytes: writer.dataBytes };
}
