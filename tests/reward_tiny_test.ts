// configs/pipelines/reward-tiny.yaml learns: its reward rises clearly. The shipped pipeline as
// it is, on the cpu backend, with 60 of its 200 iterations (about 20 s on 2 cores; the README's
// curve is the full run): the population's mean reward over the last 10 iterations and θ's
// held-out reward at the last evaluation both exceed the first ones by at least 0.2.
import { assert } from "./helpers.ts";
import { withTempDir } from "./helpers.ts";
import { acquireDevice } from "../kernels/backend.ts";
import { loadPipelineFile } from "../pipeline/load.ts";
import { resolvePipeline } from "../pipeline/resolve.ts";
import { runTraining } from "../pipeline/run.ts";
import { parseMetrics } from "../pipeline/run_dir.ts";

const PIPELINE = new URL("../configs/pipelines/reward-tiny.yaml", import.meta.url).pathname;

Deno.test("reward-tiny: the reward rises in its first 60 iterations (cpu)", async () => {
  await withTempDir(async (dir) => {
    const loaded = await loadPipelineFile(PIPELINE, {
      overrides: { iterations: 60, out: `${dir}/run`, backend: "cpu" },
    });
    const device = await acquireDevice({ backend: "cpu" });
    try {
      await runTraining(device, await resolvePipeline(loaded));
    } finally {
      device.destroy();
    }
    const lines = parseMetrics(
      await Deno.readTextFile(`${dir}/run/metrics.jsonl`),
    ) as (ReturnType<typeof parseMetrics>[number] & {
      reward_mean: number;
      eval_reward?: number;
    })[];
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const first = mean(lines.slice(0, 10).map((l) => l.reward_mean));
    const last = mean(lines.slice(-10).map((l) => l.reward_mean));
    assert(last >= first + 0.2, `mean reward ${first.toFixed(3)} → ${last.toFixed(3)}`);
    const evals = lines.filter((l) => l.eval_reward !== undefined).map((l) => l.eval_reward!);
    assert(
      evals.at(-1)! >= evals[0] + 0.2,
      `held-out reward ${evals[0].toFixed(3)} → ${evals.at(-1)!.toFixed(3)} (${evals.join(", ")})`,
    );
  });
});
