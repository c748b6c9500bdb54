/**
 * What the status server shows: a run seen through a {@link RunSource}, whether it is training in
 * this process ({@link LiveRun} in server/live.ts) or lies on disk (server/run_dir.ts).
 *
 * The server never reaches into the training loop: it reads snapshots and receives events. A
 * source answers every question from memory or from the run dir's fixed files, so no request can
 * name a path.
 *
 * @module
 */
import type { MetricsLine } from "../pipeline/run_dir.ts";

/**
 * Where a run stands.
 * - running: training in this process.
 * - finished: all iterations done; final/ is written.
 * - stopped: ended early by request (POST /api/stop, Ctrl-C) with a checkpoint of the last
 *   iteration, so `--resume` loses nothing. From disk: every iteration in metrics.jsonl is in a
 *   checkpoint and there is no final/.
 * - failed: training threw in this process; `error` says why.
 * - crashed: from disk only: metrics.jsonl holds iterations past the latest checkpoint and there
 *   is no final/ (the process died; a run still going in another process also looks like this).
 */
export type RunStateName = "running" | "finished" | "stopped" | "failed" | "crashed";

/** An event of the run, as GET /api/events sends it. */
export type RunEvent =
  | { type: "iteration"; data: MetricsLine }
  | { type: "checkpoint"; data: { dir: string; iteration: number } }
  | { type: "end"; data: { state: RunStateName; error?: string } };

/** A moment of a run: what GET /api/status reports (in camelCase here, snake_case on the wire). */
export interface RunSnapshot {
  /** The pipeline's name. */
  run: string;
  /** The pipeline file the run was started from; null when only the run dir is known. */
  pipelineFile: string | null;
  /** The resolved pipeline (every key, defaults filled); null when no state.json exists yet. */
  pipeline: Record<string, unknown> | null;
  /** The device the run trains on, in words; null when unknown. */
  adapter: string | null;
  /** Where it stands. */
  state: RunStateName;
  /** Why the run failed (state "failed"); null otherwise. */
  error: string | null;
  /** Iterations completed. */
  iteration: number;
  /** Iterations the run is asked for; null when unknown (a run dir with no state.json). */
  total: number | null;
  /** The latest metrics line. */
  latest: MetricsLine | null;
  /** The latest held-out loss and the iteration it was measured at (not every line has one). */
  evalLoss: { iter: number; value: number } | null;
  /** A reward run's latest held-out reward and its iteration; absent or null otherwise. */
  evalReward?: { iter: number; value: number } | null;
  /** Measured wall seconds per iteration (recent ones); null before the first. */
  secondsPerIteration: number | null;
  /** Seconds left at that pace; 0 once finished; null when not running. */
  etaSeconds: number | null;
  /** Device memory of the compiled plan (pipeline/compile.ts, Plan.bytes.total). */
  plannedMemoryBytes: number | null;
}

/** A run the server can show. Every method is cheap: it is called per request. */
export interface RunSource {
  /** Where the run stands now. */
  snapshot(): Promise<RunSnapshot>;
  /** Every metrics line so far, in iteration order. */
  metrics(): Promise<MetricsLine[]>;
  /** Calls `listener` on each event from now on; returns the unsubscribe function. */
  subscribe(listener: (event: RunEvent) => void): () => void;
  /**
   * Asks the run to stop after its current iteration (with a checkpoint). Returns false when it
   * is not running. Absent on read-only sources.
   */
  requestStop?(): boolean;
}

/** The JSON body of GET /api/status. */
export interface StatusBody {
  run: string;
  pipeline: string | null;
  adapter: string | null;
  state: RunStateName;
  error: string | null;
  iteration: number;
  total: number | null;
  fitness_mean: number | null;
  fitness_max: number | null;
  fitness_min: number | null;
  eval_loss: number | null;
  eval_iteration: number | null;
  sigma: number | null;
  alpha: number | null;
  tokens_per_s: number | null;
  /**
   * The latest step's diagnostics from the strategy's tell (pipeline/strategy.ts): the
   * population std and range of the raw fitness, sqrt(E‖Δθ‖²) (expected over the noise, not
   * measured), that over ‖θ_t‖ (measured on the device), and the antithetic pairs'
   * odd-to-even ratio. null when the line has none.
   */
  fitness_std: number | null;
  fitness_spread: number | null;
  update_norm_expected: number | null;
  update_ratio_expected: number | null;
  pair_snr: number | null;
  /**
   * A reward run (fitness type reward, pipeline/reward_run.ts): the latest line's mean, max and
   * min over the members of their mean reward, and θ's latest held-out reward with its
   * iteration. null otherwise.
   */
  reward_mean: number | null;
  reward_max: number | null;
  reward_min: number | null;
  eval_reward: number | null;
  eval_reward_iteration: number | null;
  seconds_per_iteration: number | null;
  eta_seconds: number | null;
  planned_memory_bytes: number | null;
  read_only: boolean;
  sse_clients: number;
}

/** The wire form of a snapshot. */
export function statusBody(
  s: RunSnapshot,
  o: { readOnly: boolean; sseClients: number },
): StatusBody {
  const l = s.latest;
  return {
    run: s.run,
    pipeline: s.pipelineFile,
    adapter: s.adapter,
    state: s.state,
    error: s.error,
    iteration: s.iteration,
    total: s.total,
    fitness_mean: l?.fitness_mean ?? null,
    fitness_max: l?.fitness_max ?? null,
    fitness_min: l?.fitness_min ?? null,
    eval_loss: s.evalLoss?.value ?? null,
    eval_iteration: s.evalLoss?.iter ?? null,
    sigma: l?.sigma ?? null,
    alpha: l?.alpha ?? null,
    tokens_per_s: l?.tokens_per_s ?? null,
    fitness_std: l?.fitness_std ?? null,
    fitness_spread: l?.fitness_spread ?? null,
    update_norm_expected: l?.update_norm_expected ?? null,
    update_ratio_expected: l?.update_ratio_expected ?? null,
    pair_snr: l?.pair_snr ?? null,
    reward_mean: rewardOf(l)?.reward_mean ?? null,
    reward_max: rewardOf(l)?.reward_max ?? null,
    reward_min: rewardOf(l)?.reward_min ?? null,
    eval_reward: s.evalReward?.value ?? null,
    eval_reward_iteration: s.evalReward?.iter ?? null,
    seconds_per_iteration: s.secondsPerIteration,
    eta_seconds: s.etaSeconds,
    planned_memory_bytes: s.plannedMemoryBytes,
    read_only: o.readOnly,
    sse_clients: o.sseClients,
  };
}

/** The latest held-out loss in `lines` (eval_loss is only on evaluated iterations). */
export function latestEval(lines: readonly MetricsLine[]): { iter: number; value: number } | null {
  for (let i = lines.length - 1; i >= 0; i--) {
    const v = lines[i].eval_loss;
    if (v !== undefined) return { iter: lines[i].iter, value: v };
  }
  return null;
}

/** The reward fields of a reward run's metrics line (pipeline/reward_run.ts RewardLineFields). */
export interface RewardLine {
  reward_mean?: number;
  reward_max?: number;
  reward_min?: number;
  eval_reward?: number;
}

/** A line's reward fields, when it is a reward run's. */
export function rewardOf(l: MetricsLine | null | undefined): RewardLine | null {
  return l && typeof (l as RewardLine).reward_mean === "number" ? l as RewardLine : null;
}

/** The latest held-out reward in `lines` (eval_reward is only on evaluated iterations). */
export function latestEvalReward(
  lines: readonly MetricsLine[],
): { iter: number; value: number } | null {
  for (let i = lines.length - 1; i >= 0; i--) {
    const v = (lines[i] as RewardLine).eval_reward;
    if (typeof v === "number") return { iter: lines[i].iter, value: v };
  }
  return null;
}
