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

/** A checkpoint's tensors read lazily, one at a time, in name order. */
export async function* checkpointTensors(ckpt: Checkpoint): AsyncGenerator<TensorData> {
  for (const [name, entry] of ckpt.tensors) {
    yield { name, shape: entry.shape, data: await ckpt.read(name) };
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
