/**
 * Weights on the device: upload a stream of tensors (a checkpoint read lazily, or a random init)
 * into sharded {@link DeviceTensor}s, and read them back for saving.
 *
 * @module
 */
import type { Device } from "../kernels/device.ts";
import {
  createTensor,
  type DeviceTensor,
  readTensor,
  type StorageDtype,
} from "../kernels/tensor.ts";
import type { TensorData, TensorStream } from "./safetensors.ts";
import { type Checkpoint, openCheckpoint } from "./checkpoint.ts";
import { UserError } from "../errors.ts";

/** Weights on the device by HF tensor name. */
export type DeviceWeights = Map<string, DeviceTensor>;

/**
 * Uploads each tensor of `tensors` as it arrives, so only one tensor is ever held in host memory
 * on top of what the stream itself holds. `dtype` bf16 stores each rounded to nearest even.
 */
export async function uploadWeights(
  device: Device,
  tensors: TensorStream,
  options: { dtype?: StorageDtype } = {},
): Promise<DeviceWeights> {
  const out: DeviceWeights = new Map();
  for await (const t of tensors) {
    out.set(
      t.name,
      createTensor(device, t.name, [...t.shape], { data: t.data, dtype: options.dtype }),
    );
  }
  return out;
}

/** Reads device weights back one tensor at a time, in the order given. */
export async function* downloadWeights(
  device: Device,
  weights: DeviceWeights,
  names: Iterable<string> = weights.keys(),
): AsyncGenerator<TensorData> {
  for (const name of names) {
    const t = weights.get(name);
    if (!t) throw new Error(`weight ${name} is not on the device`);
    yield { name, shape: t.shape, data: await readTensor(device, t) };
  }
}

/** Weights with NaN or ±Inf in them: which tensor, and how many of its values. */
export class NonFiniteWeights extends UserError {
  override name = "NonFiniteWeights";
  readonly tensor: string;
  readonly count: number;
  constructor(o: { source: string; tensor: string; count: number; total: number }) {
    super(
      `${o.source}: tensor ${o.tensor} has ${o.count} non-finite values (NaN or ±Inf) of ` +
        `${o.total}; these weights come from a run that diverged or a damaged file: ` +
        `use an earlier checkpoint`,
    );
    this.tensor = o.tensor;
    this.count = o.count;
  }
}

/** Non-finite elements of `data` (NaN, ±Inf). */
export function countNonFinite(data: Float32Array): number {
  let n = 0;
  for (let i = 0; i < data.length; i++) {
    // x − x is 0 for every finite x and NaN for NaN and ±Inf.
    if (data[i] - data[i] !== 0) n++;
  }
  return n;
}

/**
 * Passes tensors through, throwing {@link NonFiniteWeights} at the first one that holds NaN or
 * ±Inf (before it is handed on: a checkpoint writer then removes its temp dir).
 */
export async function* finiteTensors(
  tensors: TensorStream,
  o: { source: string },
): AsyncGenerator<TensorData> {
  for await (const t of tensors) {
    const count = countNonFinite(t.data);
    if (count > 0) {
      throw new NonFiniteWeights({
        source: o.source,
        tensor: t.name,
        count,
        total: t.data.length,
      });
    }
    yield t;
  }
}

/**
 * A checkpoint's tensors read lazily, one at a time, in name order. A tensor with NaN or ±Inf
 * is a {@link NonFiniteWeights} error naming the file: esflow never computes with such weights.
 */
export async function* checkpointTensors(ckpt: Checkpoint): AsyncGenerator<TensorData> {
  for (const [name, entry] of ckpt.tensors) {
    const data = await ckpt.read(name);
    const count = countNonFinite(data);
    if (count > 0) {
      throw new NonFiniteWeights({
        source: ckpt.dir.replace(/\/+$/, ""),
        tensor: name,
        count,
        total: data.length,
      });
    }
    yield { name, shape: entry.shape, data };
  }
}

/**
 * Opens the checkpoint in `dir` now (so a bad one fails here) and returns its tensors as a
 * stream that closes the files when it is done or abandoned.
 */
export async function openCheckpointTensors(dir: string): Promise<AsyncGenerator<TensorData>> {
  const ckpt = await openCheckpoint(dir);
  return (async function* () {
    try {
      yield* checkpointTensors(ckpt);
    } finally {
      ckpt.close();
    }
  })();
}
