/**
 * Sizes against the machine, checked before anything is allocated: the compiled plan's buffers
 * against the device's limits, and its total against this machine's memory when the device is
 * the CPU. A pipeline too big for the device (a population of 1e9, a model that does not fit) is
 * a one-line {@link UserError} at the YAML key that makes the buffer that large, with the fix,
 * instead of an allocation failure or an out-of-memory kill.
 *
 * @module
 */
import { type Device, DeviceError } from "../kernels/device.ts";
import type { Qwen3Config } from "../model/config.ts";
import { paramCount } from "../model/presets.ts";
import { compile, type Plan } from "./compile.ts";
import type { KeyPath } from "./load.ts";
import type { PipelineSpec } from "./spec.ts";
import { UserError } from "../errors.ts";

/** Bytes as a person reads them: 1.5 GiB, 340 MiB, 12 KiB. */
export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let v = n, u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
}

/** This machine's memory in bytes, or null when it cannot be read. */
export function hostMemoryBytes(): number | null {
  try {
    const total = Deno.systemMemoryInfo().total;
    return total > 0 ? total : null;
  } catch {
    return null;
  }
}

/**
 * The pipeline key a plan buffer's size grows with, and the words for the fix; `room` is the
 * fraction of the buffer that would fit (for a population: how many members, about).
 */
function keyOfBuffer(
  label: string,
  spec: PipelineSpec,
  room: number,
): { path: KeyPath; fix: string } {
  const ds = spec.dataset as { samples_per_iteration?: number; holdout?: number };
  if (/^(perturb\.|fitness\.totals|update\.|es\.)/.test(label)) {
    const n = Number((spec.perturb as { population?: number }).population);
    const fits = Math.floor(n * room * 0.9);
    return {
      path: ["perturb", "population"],
      fix: fits >= 2
        ? `use a smaller population (at most about ${fits} here)`
        : "use a smaller population",
    };
  }
  if (/^(iteration|heldout)\./.test(label)) {
    const held = (ds.holdout ?? 0) > (ds.samples_per_iteration ?? 0);
    return {
      path: ["dataset", held ? "holdout" : "samples_per_iteration"],
      fix: `use fewer samples${held ? " held out" : " per iteration"} or a smaller fitness.max_len`,
    };
  }
  if (/^model\.|lm_head|embed/.test(label)) {
    return { path: ["model"], fix: "use a smaller model" };
  }
  return {
    path: ["fitness", "micro_batch"],
    fix: "use a smaller micro_batch, max_len or member_batch",
  };
}

/** What {@link checkRunFits} needs of a run. */
export interface FitInputs {
  spec: PipelineSpec;
  config: Qwen3Config;
  /** Places in the pipeline file, for messages; without it messages name the key alone. */
  loaded?: { where(path: KeyPath): string };
}

/**
 * Compiles the pipeline for `device`'s limits (nothing allocated) and checks every buffer fits
 * the device and, on the CPU backend, that the whole plan fits this machine's memory. Returns
 * the plan, or null when the pipeline cannot be planned without running (a custom stage that
 * needs a live device). Faults are one-line {@link UserError}s at the key to change.
 */
export async function checkRunFits(device: Device, run: FitInputs): Promise<Plan | null> {
  const { spec, config } = run;
  const place = (path: KeyPath) => {
    const where = run.loaded?.where(path);
    return `${where ? `${where}: ` : ""}${path.join(".")}`;
  };
  let plan: Plan;
  try {
    plan = await compile(spec, config, {
      target: { backend: device.backend, name: device.name, limits: device.limits },
    });
  } catch (e) {
    const m = e instanceof DeviceError &&
      /^buffer (\S+): (\d+) bytes exceeds the maxBufferSize (\d+)/.exec(e.message);
    if (e instanceof UserError) throw e;
    // Not a size: a custom stage the planner cannot build. The run itself will say what fails.
    if (!m) return null;
    const [, label, bytes, max] = m;
    const { path, fix } = keyOfBuffer(label, spec, Number(max) / Number(bytes));
    throw new UserError(
      `${place(path)}: makes the buffer ${label} ${formatBytes(Number(bytes))}, beyond the ` +
        `${formatBytes(Number(max))} one buffer may have on ${device.name}; ${fix}`,
    );
  }
  const host = hostMemoryBytes();
  if (device.backend === "cpu" && host !== null && plan.bytes.total > host) {
    const largest = plan.buffers.reduce((a, b) => (b.bytes > a.bytes ? b : a));
    const weights = plan.bytes.weights;
    const { path, fix } = weights >= plan.bytes.total / 2
      ? { path: ["model"] as KeyPath, fix: "use a smaller model, or model.storage: bf16" }
      : keyOfBuffer(largest.name, spec, host / plan.bytes.total);
    throw new UserError(
      `${place(path)}: the run needs ${formatBytes(plan.bytes.total)} of memory (θ ` +
        `${formatBytes(weights)}, largest buffer ${largest.name} ${
          formatBytes(largest.bytes)
        }), but this machine has ${formatBytes(host)}; ${fix}`,
    );
  }
  return plan;
}

/**
 * Checks that a model's weights fit this machine before they are read or uploaded (eval on the
 * CPU backend holds all of θ in memory). `source` names the config.json in the message.
 */
export function checkWeightsFit(
  config: Qwen3Config,
  o: { backend: string; source: string; bytesPerParam?: number },
): void {
  const host = hostMemoryBytes();
  if (o.backend !== "cpu" || host === null) return;
  const bytes = paramCount(config) * (o.bytesPerParam ?? 4);
  if (bytes <= host) return;
  throw new UserError(
    `${o.source}: the model's ${(paramCount(config) / 1e9).toFixed(2)}B parameters need ` +
      `${formatBytes(bytes)}, but this machine has ${formatBytes(host)}; use a smaller model`,
  );
}
