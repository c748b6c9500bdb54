/**
 * A run on disk, read-only, for `deno task serve RUN_DIR`: a finished, stopped or crashed run.
 *
 * It reads only fixed files under the run dir: metrics.jsonl, final/state.json and
 * checkpoints/iter-N/state.json (through latestCheckpoint), and the latest checkpoint's
 * config.json. Files are re-read on each request, so a page reloaded while another process
 * still writes the dir shows the new lines; it emits no live events.
 *
 * State from the files (see {@link RunStateName}):
 * - finished: final/state.json exists.
 * - stopped: no final/, and the latest checkpoint covers every iteration in metrics.jsonl.
 * - crashed: no final/, and metrics.jsonl goes past the latest checkpoint (or there is none).
 *
 * @module
 */
import { basename } from "node:path";
import {
  exists,
  latestCheckpoint,
  type MetricsLine,
  parseMetrics,
  type RunState,
} from "../pipeline/run_dir.ts";
import { UserError } from "../errors.ts";
import { compile, DEFAULT_LIMITS } from "../pipeline/compile.ts";
import type { PipelineSpec } from "../pipeline/spec.ts";
import { loadConfigFile } from "../model/config.ts";
import "../pipeline/stages/mod.ts";
import { latestEval, type RunEvent, type RunSnapshot, type RunSource } from "./status.ts";

// metrics.jsonl is read as pipeline/run_dir.ts reads it; still importable from here.
export { parseMetrics };

/** A read-only {@link RunSource} over a run dir. */
export class RunDirSource implements RunSource {
  /** The run dir, without a trailing slash. */
  readonly dir: string;
  #planned: Promise<number | null> | null = null;

  private constructor(dir: string) {
    this.dir = dir;
  }

  /** Opens a run dir; one that does not exist or holds no run is a UserError. */
  static async open(dir: string): Promise<RunDirSource> {
    const d = dir.replace(/\/+$/, "") || "/";
    let info: Deno.FileInfo;
    try {
      info = await Deno.stat(d);
    } catch {
      throw new UserError(`${dir}: no such run dir`);
    }
    if (!info.isDirectory) throw new UserError(`${dir}: not a directory`);
    const src = new RunDirSource(d);
    if (!(await exists(`${d}/metrics.jsonl`)) && !(await latestCheckpoint(d))) {
      throw new UserError(
        `${dir}: not a run dir (no metrics.jsonl, final/ or checkpoints/); give the --out of a train run`,
      );
    }
    return src;
  }

  /** Every line of metrics.jsonl ([] when there is none yet). */
  async metrics(): Promise<MetricsLine[]> {
    try {
      return parseMetrics(await Deno.readTextFile(`${this.dir}/metrics.jsonl`));
    } catch {
      return [];
    }
  }

  /** The run as its files show it: finished, stopped or crashed. */
  async snapshot(): Promise<RunSnapshot> {
    const [lines, latest] = await Promise.all([this.metrics(), latestCheckpoint(this.dir)]);
    const final = latest !== null && latest.dir === `${this.dir}/final`;
    const done = Math.max(lines.length ? lines[lines.length - 1].iter + 1 : 0, 0);
    const state = final
      ? "finished"
      : latest && latest.state.iteration >= done
      ? "stopped"
      : "crashed";
    const s = latest?.state;
    const spi = lines.length ? lines.reduce((a, l) => a + l.seconds, 0) / lines.length : null;
    return {
      run: (s?.pipeline as { name?: string } | undefined)?.name ?? basename(this.dir),
      pipelineFile: null,
      pipeline: s ? pipelineOf(s) : null,
      adapter: s?.adapter ?? null,
      state,
      error: null,
      iteration: Math.max(done, latest?.state.iteration ?? 0),
      total: s?.iterations ?? null,
      latest: lines.at(-1) ?? null,
      evalLoss: latestEval(lines),
      // From the recorded per-iteration seconds: no wall clock spans the run's files.
      secondsPerIteration: spi,
      etaSeconds: state === "finished" ? 0 : null,
      plannedMemoryBytes: latest ? await this.#plannedBytes(latest) : null,
    };
  }

  /**
   * The latest checkpoint on disk (final/ or checkpoints/iter-N) and the iteration it holds:
   * what a live run announces with its `checkpoint` events, which a run dir never sends.
   */
  async lastCheckpoint(): Promise<{ dir: string; iteration: number } | null> {
    const latest = await latestCheckpoint(this.dir);
    return latest ? { dir: latest.dir, iteration: latest.state.iteration } : null;
  }

  /** Never calls `listener`: nothing changes under a read-only server. */
  subscribe(_listener: (event: RunEvent) => void): () => void {
    // Nothing changes under a read-only server; GET /api/events sends `end` at once.
    return () => {};
  }

  /** The plan's memory, compiled once from the checkpoint's config.json and pipeline. */
  #plannedBytes(latest: { dir: string; state: RunState }): Promise<number | null> {
    this.#planned ??= (async () => {
      try {
        const config = await loadConfigFile(`${latest.dir}/config.json`);
        const spec = pipelineOf(latest.state) as unknown as PipelineSpec;
        const plan = await compile(spec, config, {
          target: { backend: "webgpu", name: latest.state.adapter, limits: DEFAULT_LIMITS },
        });
        return plan.bytes.total;
      } catch {
        // A pipeline with a custom stage type this process has not registered cannot compile.
        return null;
      }
    })();
    return this.#planned;
  }
}

/** The pipeline as state.json records it, with the run's length put back. */
function pipelineOf(s: RunState): Record<string, unknown> {
  return { ...s.pipeline, iterations: s.iterations };
}
