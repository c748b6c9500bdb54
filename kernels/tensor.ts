/**
 * Device tensors, f32, row-major, split into row shards when they exceed the binding limit.
 *
 * A tensor of shape [R, ...rest] is stored as one or more GPU buffers, each holding a
 * contiguous range of whole rows, each at most `gpu.shardBytes` bytes. A real Qwen3 LM head
 * [151936, 1024] is 622 MB in f32; lavapipe binds at most 128 MiB, so it becomes 5 shards.
 * Kernels that read a sharded tensor run one dispatch per shard.
 *
 * @module
 */
import { type Gpu, GpuError } from "./runtime.ts";
import type { Step } from "./program.ts";

/** One contiguous range of rows of a tensor, in its own buffer. */
export interface Shard {
  buffer: GPUBuffer;
  /** First row of the tensor held by this shard. */
  rowStart: number;
  /** Number of rows held. */
  rows: number;
}

/** An f32 tensor on the device, as row shards. */
export interface GpuTensor {
  name: string;
  shape: number[];
  /** Elements per row: the product of shape[1..]. 1 for a vector. */
  rowSize: number;
  shards: Shard[];
}

/**
 * A tensor whose shards are written just before they are read: `fills[i]` fills shard i. An ES
 * member's matrix is one (pipeline/engine.ts): its shards are row chunks that all live in one
 * small buffer, each perturbed right before the forward reads it, so a member costs a chunk of
 * scratch rather than a copy of θ. Readers run a shard's fill, then read that shard, in turn.
 */
export type FilledTensor = GpuTensor & { fills?: Step[][] };

/** The per-shard fills of a tensor, if it has them. */
export function fillsOf(t: GpuTensor): Step[][] | undefined {
  return (t as FilledTensor).fills;
}

/**
 * The steps that read `t` shard by shard: each shard's fill (if any) right before the steps
 * `read` makes for a view of `t` holding that shard alone. Without fills, `read(t)` as is.
 */
export function readShards(t: GpuTensor, read: (view: GpuTensor) => Step[]): Step[] {
  const fills = fillsOf(t);
  if (!fills) return read(t);
  return t.shards.flatMap((s, i) => [...fills[i], ...read({ ...t, shards: [s] })]);
}

/** Elements in a tensor of this shape. */
export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** How many rows of `rowSize` f32 go into one shard of at most `shardBytes` bytes. */
export function rowsPerShard(rowSize: number, shardBytes: number): number {
  const rows = Math.floor(shardBytes / (rowSize * 4));
  return Math.max(1, rows);
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
  gpu: Gpu,
  name: string,
  shape: number[],
  options: { data?: Float32Array } = {},
): GpuTensor {
  const rows = shape.length === 0 ? 1 : shape[0];
  const rowSize = shape.length <= 1 ? 1 : numel(shape.slice(1));
  if (rowSize * 4 > gpu.shardBytes) {
    throw new GpuError(
      `tensor ${name} ${JSON.stringify(shape)}: one row is ${rowSize * 4} bytes, more than the ` +
        `${gpu.shardBytes}-byte shard limit of ${gpu.adapterName}`,
    );
  }
  if (options.data && options.data.length !== rows * rowSize) {
    throw new GpuError(
      `tensor ${name}: data has ${options.data.length} elements, shape ${
        JSON.stringify(shape)
      } needs ${rows * rowSize}`,
    );
  }
  const per = rowsPerShard(rowSize, gpu.shardBytes);
  const shards: Shard[] = shardRanges(rows, per).map((r, i, all) => {
    const label = all.length > 1 ? `${name}#${i}` : name;
    const buffer = gpu.createBuffer(label, r.rows * rowSize * 4);
    if (options.data && r.rows > 0) {
      gpu.write(
        buffer,
        options.data.subarray(r.rowStart * rowSize, (r.rowStart + r.rows) * rowSize),
      );
    }
    return { buffer, rowStart: r.rowStart, rows: r.rows };
  });
  return { name, shape: [...shape], rowSize, shards };
}

/** Uploads `data` over the whole tensor. */
export function writeTensor(gpu: Gpu, t: GpuTensor, data: Float32Array): void {
  if (data.length !== numel(t.shape)) {
    throw new GpuError(`tensor ${t.name}: write of ${data.length} elements into ${numel(t.shape)}`);
  }
  for (const s of t.shards) {
    if (s.rows === 0) continue;
    gpu.write(s.buffer, data.subarray(s.rowStart * t.rowSize, (s.rowStart + s.rows) * t.rowSize));
  }
}

/** Reads a whole tensor back (one round trip for all shards). */
export async function readTensor(gpu: Gpu, t: GpuTensor): Promise<Float32Array> {
  const parts = await gpu.readMany(
    t.shards.map((s) => ({ buffer: s.buffer, bytes: s.rows * t.rowSize * 4 })),
  );
  const out = new Float32Array(numel(t.shape));
  t.shards.forEach((s, i) => out.set(new Float32Array(parts[i]), s.rowStart * t.rowSize));
  return out;
}

/** Frees a tensor's buffers. */
export function destroyTensor(gpu: Gpu, t: GpuTensor): void {
  for (const s of t.shards) gpu.destroyBuffer(s.buffer);
  t.shards = [];
}

/** Bytes a tensor takes on the device. */
export function tensorBytes(t: GpuTensor): number {
  return t.shards.reduce((a, s) => a + s.buffer.size, 0);
}
