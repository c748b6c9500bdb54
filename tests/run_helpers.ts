// Helpers for tests that train: a run in this process, and a checkpoint's weights.
import { acquireGpu } from "../kernels/runtime.ts";
import { loadPipelineText } from "../pipeline/load.ts";
import { resolvePipeline } from "../pipeline/resolve.ts";
import { runTraining } from "../pipeline/run.ts";
import { openCheckpoint } from "../model/checkpoint.ts";

/** Trains the pipeline `yaml` into `out` in this process (its own GPU device). */
export async function train(yaml: string, out: string, o: { resume?: boolean } = {}) {
  const loaded = loadPipelineText(yaml, { file: `${out}.yaml`, overrides: { out } });
  const resolved = await resolvePipeline(loaded);
  const gpu = await acquireGpu();
  try {
    return { summary: await runTraining(gpu, resolved, { resume: o.resume }), resolved };
  } finally {
    gpu.destroy();
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
