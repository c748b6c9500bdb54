/**
 * The status server of `deno task train`: a {@link LiveRun} of the resolved pipeline served on
 * 127.0.0.1 (or `--status-host`) at output.status.port (or `--status-port`), with a bearer token
 * for POST /api/stop from ESFLOW_STATUS_TOKEN or freshly generated.
 *
 * The server runs in a worker thread (server/status_worker.ts) so that it answers while an
 * iteration blocks this thread: on the CPU backend every kernel is a synchronous native call,
 * and WebGPU readbacks wait too. This thread only posts messages (never waits on the server),
 * and reads a stop request from a shared flag between iterations.
 *
 * @module
 */
import { UserError } from "../errors.ts";
import { compile } from "../pipeline/compile.ts";
import type { ResolvedPipeline } from "../pipeline/resolve.ts";
import type { RunSummary } from "../pipeline/run.ts";
import type { MetricsLine } from "../pipeline/run_dir.ts";
import type { Device } from "../kernels/device.ts";
import type { StatusHooks } from "./live.ts";
import { generateToken } from "./mod.ts";
import type { FromStatusWorker, ToStatusWorker } from "./status_worker.ts";

/** The training loop's side of a status server in a worker: post events, read stop. */
export interface LiveFeed extends StatusHooks {
  /** The run returned: finished, or stopped early with a checkpoint. */
  finish(summary: Pick<RunSummary, "stopped" | "iterations">): void;
  /** The run threw. */
  fail(error: unknown): void;
}

/** A training run's status server. */
export interface TrainingStatus {
  live: LiveFeed;
  url: string;
  port: number;
  token: string;
  /** The lines train prints at start: the URL and how to stop. */
  banner: string;
  /** The pipeline's port, when it was taken and the server moved to the next free one. */
  movedFrom?: number;
  /** Stops the server (after the events posted so far are delivered) and its thread. */
  close(): Promise<void>;
}

/** Parses `--status-port`: an integer 0..65535 (0 = a free port). */
export function parseStatusPort(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n > 65535) {
    throw new UserError(
      `--status-port must be an integer 0..65535 (0 = a free port), got "${value}"`,
    );
  }
  return n;
}

/** Options of {@link startTrainingStatus}. */
export interface TrainingStatusOptions {
  device: Device;
  host?: string;
  /** `--status-port` (a string: parsed here), or a number already parsed; default the YAML's. */
  port?: string | number;
  /** The compiled plan's bytes, when the caller has them; else compiled here. */
  plannedMemoryBytes?: number | null;
  /** Milliseconds between SSE heartbeats. Default 15000. */
  heartbeatMs?: number;
  /**
   * Ports after a taken one to try, as Jupyter does, when the port was not asked for by
   * `port` (the flag): the pipeline's output.status.port is where to start looking. Default 50.
   */
  portRetries?: number;
}

/** Whether `port` on `host` is free to listen on now (a probe: it is closed at once). */
function portIsFree(host: string, port: number): boolean {
  try {
    Deno.listen({ hostname: host, port }).close();
    return true;
  } catch {
    return false;
  }
}

/**
 * Starts the status server of a run about to train, in its worker thread. The pipeline's port
 * (output.status.port, default 8787) is where it starts looking: a taken one moves it to the
 * next free port (up to {@link TrainingStatusOptions.portRetries} after it), and
 * {@link TrainingStatus.movedFrom} says so. A port asked for with the flag is that port or
 * nothing: taken, it is a one-line UserError naming the port and the fix, thrown before
 * anything trains.
 */
export async function startTrainingStatus(
  resolved: ResolvedPipeline,
  o: TrainingStatusOptions,
): Promise<TrainingStatus> {
  const spec = resolved.spec;
  const fromFlag = o.port !== undefined;
  const asked = o.port === undefined
    ? spec.output.status.port
    : typeof o.port === "number"
    ? o.port
    : parseStatusPort(o.port);
  const fromEnv = Deno.env.get("ESFLOW_STATUS_TOKEN");
  const token = fromEnv || generateToken();
  const planned = o.plannedMemoryBytes !== undefined
    ? o.plannedMemoryBytes
    : await plannedBytes(resolved, o.device);
  const retries = fromFlag || asked === 0 ? 0 : Math.max(0, o.portRetries ?? 50);
  const last = Math.min(65535, asked + retries);
  const host = o.host ?? "127.0.0.1";
  for (let port = asked;; port++) {
    // Probe first, so a taken port costs a failed listen here, not a server thread.
    while (port < last && !portIsFree(host, port)) port++;
    try {
      const s = await startOn(port);
      return port === asked ? s : { ...s, movedFrom: asked };
    } catch (e) {
      // Taken between the probe and the server's listen: the next one.
      if (!(e instanceof PortTaken)) throw e;
      if (port >= last) {
        if (port === asked) throw e.cause;
        throw new UserError(
          `${resolved.loaded.where(["output", "status", "port"])}: output.status.port: status ` +
            `server: ports ${asked}–${last} on ${host} are all in use; pick another there or ` +
            `with --status-port N (0 = any free port), or --no-status`,
        );
      }
    }
  }

  async function startOn(port: number): Promise<TrainingStatus> {
    const worker = new Worker(new URL("./status_worker.ts", import.meta.url).href, {
      type: "module",
    });
    // A failure inside the server thread must never take the training run down with it.
    worker.onerror = (e) => {
      e.preventDefault();
      console.error(`esflow train: the status server failed: ${e.message}`);
    };
    const replies: ((m: FromStatusWorker) => void)[] = [];
    worker.onmessage = (e: MessageEvent<FromStatusWorker>) => replies.shift()?.(e.data);
    const next = () => new Promise<FromStatusWorker>((r) => replies.push(r));
    const post = (m: ToStatusWorker) => worker.postMessage(m);

    const stop = new SharedArrayBuffer(4);
    const flag = new Int32Array(stop);
    const started = next();
    post({
      type: "start",
      info: {
        run: spec.name,
        pipelineFile: resolved.loaded.file,
        pipeline: spec as unknown as Record<string, unknown>,
        adapter: o.device.name,
        total: spec.iterations,
        plannedMemoryBytes: planned,
      },
      token,
      host: o.host,
      port,
      portFlag: "--status-port",
      portWhere: fromFlag ? undefined : resolved.loaded.where(["output", "status", "port"]) +
        ": output.status.port",
      portFix: fromFlag
        ? "pick another with --status-port N (0 = any free port), or --no-status to run without it"
        : "pick another there or with --status-port N (0 = any free port), or --no-status",
      heartbeatMs: o.heartbeatMs,
      stop,
    });
    const reply = await started;
    if (reply.type !== "listening") {
      worker.terminate();
      const message = reply.type === "error" ? reply.message : "the status server did not start";
      const error = reply.type === "error" && reply.user
        ? new UserError(message)
        : new Error(message);
      if (reply.type === "error" && / is in use;/.test(message)) throw new PortTaken(error);
      throw error;
    }
    const { url } = reply;
    let closed = false;
    const live: LiveFeed = {
      iteration: (line: MetricsLine, p: { total: number }) =>
        post({ type: "iteration", line, total: p.total }),
      checkpoint: (dir: string, iteration: number) => post({ type: "checkpoint", dir, iteration }),
      get stopRequested() {
        return Atomics.load(flag, 0) === 1;
      },
      finish: (s) => post({ type: "finish", stopped: s.stopped, iterations: s.iterations }),
      fail: (e) => {
        const message = e instanceof Error ? e.message : String(e);
        post({ type: "fail", error: message.split("\n")[0] });
      },
    };
    const moved = port === asked ? "" : `port ${asked} was in use; `;
    const banner = `status ${url} (${moved}stop: curl -X POST -H "Authorization: Bearer ${
      fromEnv ? "$ESFLOW_STATUS_TOKEN" : token
    }" ${url}api/stop)`;
    return {
      live,
      url,
      port: reply.port,
      token,
      banner,
      close: async () => {
        if (closed) return;
        closed = true;
        const done = next();
        post({ type: "close" });
        // Bounded: a wedged server thread must not keep train from exiting.
        let timer: ReturnType<typeof setTimeout> | undefined;
        await Promise.race([done, new Promise((r) => timer = setTimeout(r, 5000))]);
        clearTimeout(timer);
        worker.terminate();
      },
    };
  }
}

/** The server's port was taken; `cause` is the one-line error to report if none is left. */
class PortTaken extends Error {
  constructor(override readonly cause: Error) {
    super(cause.message);
  }
}

/** The plan's device memory on this adapter's limits; null if the pipeline cannot compile. */
async function plannedBytes(
  resolved: ResolvedPipeline,
  device: Device,
): Promise<number | null> {
  try {
    const plan = await compile(resolved.spec, resolved.config, {
      target: { backend: device.backend, name: device.name, limits: device.limits },
    });
    return plan.bytes.total;
  } catch {
    // A custom stage the planner cannot build: the status shows no number rather than failing.
    return null;
  }
}

export { withStatusHooks } from "./live.ts";
