/**
 * The status server of a training run, in a worker thread of its own (server/train_status.ts
 * starts it). The training loop's kernels are synchronous native calls on the CPU backend and
 * its readbacks block on WebGPU, so an HTTP server on the loop's event loop would wait for each
 * of them; here it has its own event loop and answers while an iteration runs.
 *
 * The loop posts what happens (metrics lines, checkpoints, the end) and this thread keeps a
 * {@link LiveRun} of them, served by the same app as ever (server/mod.ts). A stop request is
 * written at once into a shared flag the loop reads between iterations, and answered 202 here
 * without waiting for the loop.
 *
 * Messages in: start, iteration, checkpoint, finish, fail, close. Out: listening, error, closed.
 *
 * @module
 */
import { LiveRun, type LiveRunInfo } from "./live.ts";
import { startStatusServer, type StatusServer } from "./mod.ts";
import type { MetricsLine } from "../pipeline/run_dir.ts";
import { UserError } from "../errors.ts";

/** The first message: what to serve and where. */
export interface StartMessage {
  type: "start";
  info: LiveRunInfo;
  token: string;
  host?: string;
  port: number;
  portFlag: string;
  portWhere?: string;
  portFix?: string;
  heartbeatMs?: number;
  /** An Int32Array's buffer: [0] becomes 1 when POST /api/stop is accepted. */
  stop: SharedArrayBuffer;
}

/** What the training loop posts. */
export type ToStatusWorker =
  | StartMessage
  | { type: "iteration"; line: MetricsLine; total: number }
  | { type: "checkpoint"; dir: string; iteration: number }
  | { type: "finish"; stopped: boolean; iterations: number }
  | { type: "fail"; error: string }
  | { type: "close" };

/** What this thread posts back. */
export type FromStatusWorker =
  | { type: "listening"; url: string; port: number }
  | { type: "error"; message: string; user: boolean }
  | { type: "closed" };

// deno-lint-ignore no-explicit-any
const port = self as any as {
  onmessage: ((e: MessageEvent<ToStatusWorker>) => void) | null;
  postMessage(m: FromStatusWorker): void;
  close(): void;
};

let live: LiveRun | null = null;
let server: StatusServer | null = null;

port.onmessage = async (e) => {
  const m = e.data;
  switch (m.type) {
    case "start": {
      const flag = new Int32Array(m.stop);
      live = new LiveRun(m.info, { onStop: () => Atomics.store(flag, 0, 1) });
      try {
        server = startStatusServer({
          source: live,
          token: m.token,
          readOnly: false,
          host: m.host,
          port: m.port,
          portFlag: m.portFlag,
          portWhere: m.portWhere,
          portFix: m.portFix,
          heartbeatMs: m.heartbeatMs,
        });
        port.postMessage({ type: "listening", url: server.url, port: server.port });
      } catch (err) {
        port.postMessage({
          type: "error",
          message: (err as Error).message,
          user: err instanceof UserError,
        });
      }
      return;
    }
    case "iteration":
      return live?.iteration(m.line, { total: m.total });
    case "checkpoint":
      return live?.checkpoint(m.dir, m.iteration);
    case "finish":
      return live?.finish({ stopped: m.stopped, iterations: m.iterations });
    case "fail":
      return live?.fail(new Error(m.error));
    case "close":
      await server?.close();
      server = null;
      port.postMessage({ type: "closed" });
      return;
  }
};
