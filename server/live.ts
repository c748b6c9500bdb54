/**
 * A run training in this process, as the status server sees it: fed by runTraining's hooks,
 * keeping its history in memory and fanning events out to subscribers.
 *
 * Hooks run inside the training loop, so everything here is synchronous and O(subscribers):
 * a listener only enqueues (server/sse.ts), it never waits on a client.
 *
 * @module
 */
import type { RunOptions, RunSummary } from "../pipeline/run.ts";
import type { MetricsLine } from "../pipeline/run_dir.ts";
import {
  latestEval,
  latestEvalReward,
  type RunEvent,
  type RunSnapshot,
  type RunSource,
} from "./status.ts";
import type { RunStateName } from "./status.ts";

/** What a live run knows before its first iteration. */
export interface LiveRunInfo {
  run: string;
  pipelineFile: string;
  pipeline: Record<string, unknown>;
  adapter: string;
  total: number;
  plannedMemoryBytes?: number | null;
}

/**
 * What the training loop feeds a status server through: a {@link LiveRun} in this process, or
 * server/train_status.ts's handle on one served from a worker thread.
 */
export interface StatusHooks {
  /** runTraining's onIteration. */
  iteration(line: MetricsLine, o: { total: number }): void;
  /** runTraining's onCheckpoint. */
  checkpoint(dir: string, iteration: number): void;
  /** Whether POST /api/stop asked the run to stop; read between iterations. */
  readonly stopRequested: boolean;
}

/** Iterations the ETA averages over: recent enough to follow a changing pace. */
const PACE_WINDOW = 20;

/** A run in this process: a {@link RunSource} plus the hooks and end calls that feed it. */
export class LiveRun implements RunSource, StatusHooks {
  #info: LiveRunInfo;
  #onStop: (() => void) | undefined;
  #history: MetricsLine[] = [];
  #state: RunStateName = "running";
  #error: string | null = null;
  #iteration = 0;
  #total: number;
  #stopRequested = false;
  #listeners = new Set<(e: RunEvent) => void>();
  /** performance.now() at each iteration's end, the last PACE_WINDOW + 1 of them. */
  #ends: number[] = [];

  /** `onStop` is called once when a stop is first requested (a worker passes it on). */
  constructor(info: LiveRunInfo, o: { onStop?: () => void } = {}) {
    this.#info = info;
    this.#total = info.total;
    this.#onStop = o.onStop;
  }

  /** Whether POST /api/stop (or {@link requestStop}) asked the run to stop. */
  get stopRequested(): boolean {
    return this.#stopRequested;
  }

  /** Number of subscribers (open event streams). */
  get subscribers(): number {
    return this.#listeners.size;
  }

  snapshot(): Promise<RunSnapshot> {
    const spi = this.#secondsPerIteration();
    const left = Math.max(0, this.#total - this.#iteration);
    return Promise.resolve({
      run: this.#info.run,
      pipelineFile: this.#info.pipelineFile,
      pipeline: this.#info.pipeline,
      adapter: this.#info.adapter,
      state: this.#state,
      error: this.#error,
      iteration: this.#iteration,
      total: this.#total,
      latest: this.#history.at(-1) ?? null,
      evalLoss: latestEval(this.#history),
      evalReward: latestEvalReward(this.#history),
      secondsPerIteration: spi,
      etaSeconds: this.#state === "finished"
        ? 0
        : this.#state === "running" && spi !== null
        ? spi * left
        : null,
      plannedMemoryBytes: this.#info.plannedMemoryBytes ?? null,
    });
  }

  metrics(): Promise<MetricsLine[]> {
    return Promise.resolve(this.#history.slice());
  }

  subscribe(listener: (event: RunEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  requestStop(): boolean {
    if (this.#state !== "running") return false;
    if (!this.#stopRequested) this.#onStop?.();
    this.#stopRequested = true;
    return true;
  }

  /** runTraining's onIteration. */
  iteration(line: MetricsLine, o: { total: number }): void {
    // A resumed run starts past 0: the history is what this process saw.
    this.#history.push(line);
    this.#iteration = line.iter + 1;
    this.#total = o.total;
    this.#ends.push(performance.now());
    if (this.#ends.length > PACE_WINDOW + 1) this.#ends.shift();
    this.#emit({ type: "iteration", data: line });
  }

  /** runTraining's onCheckpoint. */
  checkpoint(dir: string, iteration: number): void {
    this.#emit({ type: "checkpoint", data: { dir, iteration } });
  }

  /** The run returned: finished, or stopped early with a checkpoint. */
  finish(summary: Pick<RunSummary, "stopped" | "iterations">): void {
    this.#iteration = summary.iterations;
    this.#end(summary.stopped ? "stopped" : "finished", null);
  }

  /** The run threw. */
  fail(error: unknown): void {
    const message = error instanceof Error ? error.message : String(error);
    this.#end("failed", message.split("\n")[0]);
  }

  #end(state: RunStateName, error: string | null): void {
    if (this.#state !== "running") return;
    this.#state = state;
    this.#error = error;
    this.#emit({ type: "end", data: error === null ? { state } : { state, error } });
  }

  #emit(event: RunEvent): void {
    for (const l of [...this.#listeners]) {
      // A listener that throws is the server's bug, never the training loop's problem.
      try {
        l(event);
      } catch (e) {
        console.error(`esflow status: event listener failed: ${(e as Error).message}`);
        this.#listeners.delete(l);
      }
    }
  }

  #secondsPerIteration(): number | null {
    const e = this.#ends;
    // Wall time between iteration ends counts checkpoints and metrics writes too; with one
    // iteration seen, fall back to its own measured seconds.
    if (e.length >= 2) return (e[e.length - 1] - e[0]) / 1000 / (e.length - 1);
    return this.#history.at(-1)?.seconds ?? null;
  }
}

/**
 * Adds a live run's hooks to runTraining's options, keeping the caller's: each hook calls both,
 * and the run stops when either asks. With no live run, returns `options` as they are.
 */
export function withStatusHooks(
  live: StatusHooks | null | undefined,
  options: RunOptions,
): RunOptions {
  if (!live) return options;
  return {
    ...options,
    onIteration: (line, o) => {
      live.iteration(line, o);
      options.onIteration?.(line, o);
    },
    onCheckpoint: (dir, iteration) => {
      live.checkpoint(dir, iteration);
      return options.onCheckpoint?.(dir, iteration);
    },
    shouldStop: () => live.stopRequested || (options.shouldStop?.() ?? false),
  };
}
