/**
 * Device tensors, f32 (or bf16 storage), row-major, split into row shards when they exceed the
 * binding limit.
 *
 * A tensor of shape [R, ...rest] is stored as one or more GPU buffers, each holding a
 * contiguous range of whole rows, each at most `device.shardBytes` bytes. A real Qwen3 LM head
 * [151936, 1024] is 622 MB in f32; lavapipe binds at most 128 MiB, so it becomes 5 shards.
 * Kernels that read a sharded tensor run one dispatch per shard.
 *
 * Tests: tests/kernels_test.ts and tests/bf16_test.ts (shards, bf16 round trips).
 *
 * @module
 */
import { type BufferPurpose, type Device, type DeviceBuffer, DeviceError } from "./device.ts";
import type { Step } from "./program.ts";

/** One contiguous range of rows of a tensor, in its own buffer. */
export interface Shard {
  buffer: DeviceBuffer;
  /** First row of the tensor held by this shard. */
  rowStart: number;
  /** Number of rows held. */
  rows: number;
}

/**
 * How a tensor's elements are stored: f32, or bf16 (the top half of the f32 bits) packed two to
 * a u32 word, element 2k in the low half of word k. Kernels that compute read f32; a bf16 tensor
 * is read through a kernel that widens it (kernels/noise_perturb.wgsl with THETA_BF16).
 */
export type StorageDtype = "f32" | "bf16";

/** A tensor on the device, as row shards. */
export interface DeviceTensor {
  name: string;
  shape: number[];
  /** Elements per row: the product of shape[1..]. 1 for a vector. */
  rowSize: number;
  shards: Shard[];
  /** Element storage; absent means f32. */
  dtype?: StorageDtype;
  /**
   * Population batching: each shard buffer holds one copy per member, this many elements apart
   * (member z's copy of a shard starts z·memberStride in). Absent or 0: one copy, shared.
   */
  memberStride?: number;
}

/** Bytes per element of a storage dtype. */
export function dtypeBytes(dtype: StorageDtype = "f32"): number {
  return dtype === "bf16" ? 2 : 4;
}

/** The bf16 bits of each f32, rounded to nearest even (NaN stays a quiet NaN). */
export function toBf16(data: Float32Array): Uint16Array {
  const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
  const out = new Uint16Array(data.length);
  for (let i = 0; i < data.length; i++) {
    const b = bits[i];
    if ((b & 0x7F800000) === 0x7F800000 && (b & 0x007FFFFF) !== 0) {
      out[i] = (b >>> 16) | 0x0040;
      continue;
    }
    out[i] = ((b + 0x7FFF + ((b >>> 16) & 1)) >>> 16) & 0xFFFF;
  }
  return out;
}

/** f32 values of bf16 bits (exact). */
export function fromBf16(bits: Uint16Array): Float32Array {
  const out = new Uint32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = bits[i] << 16;
  return new Float32Array(out.buffer);
}

/**
 * A tensor whose shards are written just before they are read: `fills[i]` fills shard i. An ES
 * member's matrix is one (pipeline/engine.ts): its shards are row chunks that all live in one
 * small buffer, each perturbed right before the forward reads it, so a member costs a chunk of
 * scratch rather than a copy of θ. Readers run a shard's fill, then read that shard, in turn.
 */
export type FilledTensor = DeviceTensor & { fills?: Step[][] };

/** The per-shard fills of a tensor, if it has them. */
export function fillsOf(t: DeviceTensor): Step[][] | undefined {
  return (t as FilledTensor).fills;
}

/**
 * The steps that read `t` shard by shard: each shard's fill (if any) right before the steps
 * `read` makes for a view of `t` holding that shard alone. Without fills, `read(t)` as is.
 */
export function readShards(t: DeviceTensor, read: (view: DeviceTensor) => Step[]): Step[] {
  const fills = fillsOf(t);
  if (!fills) return read(t);
  return t.shards.flatMap((s, i) => [...fills[i], ...read({ ...t, shards: [s] })]);
}

/**
 * {@link readShards} for two tensors read by the same steps (the MLP's gate and up). With fills,
 * both must be cut into the same row ranges: each pair's fills run, then `read` of the pair.
 */
export function readShardPairs(
  a: DeviceTensor,
  b: DeviceTensor,
  read: (a: DeviceTensor, b: DeviceTensor) => Step[],
): Step[] {
  const fa = fillsOf(a), fb = fillsOf(b);
  if (!fa && !fb) return read(a, b);
  const aligned = a.shards.length === b.shards.length &&
    a.shards.every((s, i) => s.rowStart === b.shards[i].rowStart && s.rows === b.shards[i].rows);
  if (!aligned) throw new DeviceError(`${a.name} and ${b.name} are filled in different row ranges`);
  return a.shards.flatMap((s, i) => [
    ...(fa?.[i] ?? []),
    ...(fb?.[i] ?? []),
    ...read({ ...a, shards: [s] }, { ...b, shards: [b.shards[i]] }),
  ]);
}

/** Elements in a tensor of this shape. */
export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/**
 * How many rows of `rowSize` elements go into one shard of at most `shardBytes` bytes. In bf16
 * a shard holds an even number of elements, so no u32 word is split between two shards.
 */
export function rowsPerShard(
  rowSize: number,
  shardBytes: number,
  dtype: StorageDtype = "f32",
): number {
  const rows = Math.max(1, Math.floor(shardBytes / (rowSize * dtypeBytes(dtype))));
  return dtype === "bf16" && rowSize % 2 === 1 ? Math.max(2, rows - (rows % 2)) : rows;
}

/** Splits `rows` rows into shard ranges of at most `per` rows. */
export function shardRanges(rows: number, per: number): { rowStart: number; rows: number }[] {
  const out = [];
  for (let r = 0; r < rows; r += per) out.push({ rowStart: r, rows: Math.min(per, rows - r) });
  if (out.length === 0) out.push({ rowStart: 0, rows: 0 });
  return out;
}

/**
 * Allocates a tensor on the device, sharded by rows, and uploads `data` when given.
 * A vector (1-D) is treated as rows of one element.
 */
export function createTensor(
  device: Device,
  name: string,
  shape: number[],
  options: { data?: Float32Array; dtype?: StorageDtype; purpose?: BufferPurpose } = {},
): DeviceTensor {
  const rows = shape.length === 0 ? 1 : shape[0];
  const rowSize = shape.length <= 1 ? 1 : numel(shape.slice(1));
  const dtype = options.dtype ?? "f32", bytes = dtypeBytes(dtype);
  if (dtype === "bf16" && (rows * rowSize) % 2 === 1) {
    throw new DeviceError(
      `tensor ${name} ${JSON.stringify(shape)}: bf16 storage packs pairs of elements and needs ` +
        `an even count, got ${rows * rowSize}; store it in f32`,
    );
  }
  if (rowSize * bytes > device.shardBytes) {
    throw new DeviceError(
      `tensor ${name} ${JSON.stringify(shape)}: one row is ${
        rowSize * bytes
      } bytes, more than the ` +
        `${device.shardBytes}-byte shard limit of ${device.name}`,
    );
  }
  if (options.data && options.data.length !== rows * rowSize) {
    throw new DeviceError(
      `tensor ${name}: data has ${options.data.length} elements, shape ${
        JSON.stringify(shape)
      } needs ${rows * rowSize}`,
    );
  }
  const per = rowsPerShard(rowSize, device.shardBytes, dtype);
  const shards: Shard[] = shardRanges(rows, per).map((r, i, all) => {
    const label = all.length > 1 ? `${name}#${i}` : name;
    const buffer = device.createBuffer(
      label,
      r.rows * rowSize * bytes,
      options.purpose ?? "weights",
    );
    return { buffer, rowStart: r.rowStart, rows: r.rows };
  });
  const t: DeviceTensor = { name, shape: [...shape], rowSize, shards };
  if (dtype !== "f32") t.dtype = dtype;
  if (options.data) writeTensor(device, t, options.data);
  return t;
}

/** Uploads `data` over the whole tensor. */
export function writeTensor(device: Device, t: DeviceTensor, data: Float32Array): void {
  if (data.length !== numel(t.shape)) {
    throw new DeviceError(
      `tensor ${t.name}: write of ${data.length} elements into ${numel(t.shape)}`,
    );
  }
  for (const s of t.shards) {
    if (s.rows === 0) continue;
    const part = data.subarray(s.rowStart * t.rowSize, (s.rowStart + s.rows) * t.rowSize);
    device.write(s.buffer, t.dtype === "bf16" ? toBf16(part) : part);
  }
}

/** Reads a whole tensor back (one round trip for all shards). */
export async function readTensor(device: Device, t: DeviceTensor): Promise<Float32Array> {
  const bytes = dtypeBytes(t.dtype);
  const parts = await device.readMany(
    t.shards.map((s) => ({ buffer: s.buffer, bytes: s.rows * t.rowSize * bytes })),
  );
  const out = new Float32Array(numel(t.shape));
  t.shards.forEach((s, i) =>
    out.set(
      t.dtype === "bf16" ? fromBf16(new Uint16Array(parts[i])) : new Float32Array(parts[i]),
      s.rowStart * t.rowSize,
    )
  );
  return out;
}

/** Frees a tensor's buffers. */
export function destroyTensor(device: Device, t: DeviceTensor): void {
  for (const s of t.shards) device.destroyBuffer(s.buffer);
  t.shards = [];
}

/** Bytes a tensor takes on the device. */
export function tensorBytes(t: DeviceTensor): number {
  return t.shards.reduce((a, s) => a + s.buffer.size, 0);
}
