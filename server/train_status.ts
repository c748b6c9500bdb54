/**
 * The status server of `deno task train`: a {@link LiveRun} for the resolved pipeline, served
 * on 127.0.0.1 (or `--status-host`) at output.status.port (or `--status-port`), with a bearer
 * token for POST /api/stop from ESFLOW_STATUS_TOKEN or freshly generated.
 *
 * @module
 */
import { UserError } from "../pipeline/errors.ts";
import { compile } from "../pipeline/compile.ts";
import type { ResolvedPipeline } from "../pipeline/resolve.ts";
import type { Device } from "../kernels/device.ts";
import { LiveRun } from "./live.ts";
import { generateToken, startStatusServer, type StatusServer } from "./mod.ts";

/** A training run's status server. */
export interface TrainingStatus {
  live: LiveRun;
  server: StatusServer;
  token: string;
  /** The lines train prints at start: the URL and how to stop. */
  banner: string;
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

/**
 * Starts the status server of a run about to train. A taken port is a one-line UserError naming
 * the port and the fix, thrown before anything trains.
 */
export async function startTrainingStatus(
  resolved: ResolvedPipeline,
  o: { device: Device; host?: string; port?: string },
): Promise<TrainingStatus> {
  const spec = resolved.spec;
  const port = o.port === undefined ? spec.output.status.port : parseStatusPort(o.port);
  const fromEnv = Deno.env.get("ESFLOW_STATUS_TOKEN");
  const token = fromEnv || generateToken();
  const live = new LiveRun({
    run: spec.name,
    pipelineFile: resolved.loaded.file,
    pipeline: spec as unknown as Record<string, unknown>,
    adapter: o.device.name,
    total: spec.iterations,
    plannedMemoryBytes: await plannedBytes(resolved, o.device),
  });
  const server = startStatusServer({
    source: live,
    token,
    readOnly: false,
    host: o.host,
    port,
    portFlag: "--status-port (or --no-status)",
  });
  const banner = `status ${server.url} (stop: curl -X POST -H "Authorization: Bearer ${
    fromEnv ? "$ESFLOW_STATUS_TOKEN" : token
  }" ${server.url}api/stop)`;
  return { live, server, token, banner, close: () => server.close() };
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
