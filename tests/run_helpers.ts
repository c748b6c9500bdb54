// Helpers for tests that train: a run in this process, and a checkpoint's weights.
import type { Backend } from "../kernels/device.ts";
import { acquireDevice } from "../kernels/backend.ts";
import { loadPipelineText } from "../pipeline/load.ts";
import { resolvePipeline } from "../pipeline/resolve.ts";
import { runTraining } from "../pipeline/run.ts";
import { openCheckpoint } from "../model/checkpoint.ts";

/**
 * Trains the pipeline `yaml` into `out` in this process, on its own device of `o.backend`
 * (default webgpu: lavapipe here).
 */
export async function train(
  yaml: string,
  out: string,
  o: { resume?: boolean; backend?: Backend } = {},
) {
  const loaded = loadPipelineText(yaml, { file: `${out}.yaml`, overrides: { out } });
  const resolved = await resolvePipeline(loaded);
  const device = await acquireDevice({ backend: o.backend ?? "webgpu" });
  try {
    return { summary: await runTraining(device, resolved, { resume: o.resume }), resolved };
  } finally {
    device.destroy();
  }
}

/** Every tensor of a checkpoint directory, as f32. */
export async function readWeights(dir: string): Promise<Map<string, Float32Array>> {
  const ckpt = await openCheckpoint(dir);
  const out = new Map<string, Float32Array>();
  for (const name of ckpt.tensors.keys()) out.set(name, await ckpt.read(name));
  ckpt.close();
  return out;
}
