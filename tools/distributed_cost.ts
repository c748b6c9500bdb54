/**
 * `deno run -A tools/distributed_cost.ts`: what a distributed run costs, measured. For 1, 2 and
 * 3 processes (a coordinator that evaluates too, plus 0, 1 or 2 workers with cold caches), on
 * one machine through one redis-server it starts itself (unix socket, no persistence, stopped by
 * its PID):
 *
 * - bootstrap bytes: Redis's byte counters from the coordinator's start until every worker
 *   serves (the coordinator publishing the samples and files, each worker fetching them);
 * - bytes per iteration: the counters from then to the run's end, over the iterations in it
 *   (fitness, coefficients, the ledger, task claims and the polls that wait for them);
 * - seconds per iteration: metrics.jsonl's, over the iterations every process served; and the
 *   same run in one process without Redis (`--processes 0`), the baseline.
 *
 * Bytes are INFO stats total_net_input_bytes + total_net_output_bytes, so they count what Redis
 * received and sent, every command and reply included. With every process on one machine the
 * seconds show the protocol's overhead, not a cluster's speed-up: P processes share its cores.
 *
 *   deno run -A tools/distributed_cost.ts [PIPELINE] [--iterations N] [--processes 0,1,2,3]
 *     [--backend auto|webgpu|cpu] [--json]
 *
 * Default: configs/pipelines/tiny-austen.yaml, 8 iterations, the cpu backend.
 *
 * @module
 */
import { type CommandHelp, type DocumentedFlag, parseFlags, runMain } from "./cli.ts";
import { UserError } from "../errors.ts";
import { DEFAULT_PIPELINE_PATH, loadPipelineFile } from "../pipeline/load.ts";
import { resolvePipeline } from "../pipeline/resolve.ts";
import { RedisBus } from "../pipeline/distributed.ts";
import { parseBackend } from "../kernels/backend.ts";
import { paramCount } from "../model/presets.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** distributed_cost's flags. */
export const COST_FLAGS = {
  iterations: { type: "string", value: "N", help: "iterations of each run", default: "8" },
  processes: {
    type: "string",
    value: "LIST",
    help: "process counts to measure, comma-separated; 0 is one process without Redis",
    default: "0,1,2,3",
  },
  backend: {
    type: "string",
    value: "auto|webgpu|cpu",
    help: "every process's backend",
    default: "cpu",
  },
  json: { type: "boolean", help: "print the report as JSON" },
} satisfies Record<string, DocumentedFlag>;

const HELP: CommandHelp = {
  command: "deno run -A tools/distributed_cost.ts",
  args: "[PIPELINE]",
  about: "Bytes through Redis (bootstrap, per iteration) and seconds per iteration of a " +
    "distributed run with 1, 2 and 3 processes on this machine.",
  example: "deno run -A tools/distributed_cost.ts --iterations 8 --processes 0,1,2,3",
};

/** One measured run. */
export interface CostRow {
  /** Processes in the run; 0: the baseline, one process without Redis. */
  processes: number;
  bootstrap_bytes: number;
  bytes_per_iteration: number;
  /** null when no iteration ran with every process (workers joined after the last). */
  seconds_per_iteration: number | null;
  /** Iterations the per-iteration numbers are over (those after every worker served). */
  iterations_measured: number;
}

function cpuModel(): string {
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(Deno.readTextFileSync("/proc/cpuinfo"));
    if (m) return m[1].trim();
  } catch { /* not Linux */ }
  return `${Deno.build.arch} ${Deno.build.os}`;
}

async function redisServer(dir: string): Promise<{ url: string; stop: () => Promise<void> }> {
  const sock = `${dir}/redis.sock`;
  const child = new Deno.Command("redis-server", {
    args: ["--port", "0", "--unixsocket", sock, "--save", "", "--appendonly", "no", "--dir", dir],
    stdout: "null",
    stderr: "null",
  }).spawn();
  for (let i = 0;; i++) {
    try {
      (await Deno.connect({ transport: "unix", path: sock })).close();
      break;
    } catch {
      if (i > 200) throw new UserError("redis-server did not start within 10 s");
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return {
    url: `unix://${sock}`,
    stop: async () => {
      Deno.kill(child.pid, "SIGTERM");
      await child.status;
    },
  };
}

/** A child whose stdout and stderr are collected. */
function spawn(args: string[]): { out: () => string; done: Promise<number> } {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...args],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  let text = "";
  const dec = new TextDecoder();
  const drain = async (s: ReadableStream<Uint8Array>) => {
    for await (const c of s) text += dec.decode(c, { stream: true });
  };
  const drained = Promise.all([drain(child.stdout), drain(child.stderr)]);
  return { out: () => text, done: child.status.then(async (s) => (await drained, s.code)) };
}

async function until(fn: () => boolean | Promise<boolean>, what: string): Promise<void> {
  const end = performance.now() + 300_000;
  while (!(await fn())) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function metrics(out: string): Promise<{ iter: number; seconds: number }[]> {
  try {
    return (await Deno.readTextFile(`${out}/metrics.jsonl`)).trim().split("\n").filter(Boolean)
      .map((l) => JSON.parse(l));
  } catch {
    return [];
  }
}

function meanSeconds(lines: { seconds: number }[]): number | null {
  return lines.length === 0 ? null : lines.reduce((a, l) => a + l.seconds, 0) / lines.length;
}

/** Measures one run of `processes` processes. */
async function measure(
  o: { file: string; iterations: number; processes: number; backend: string; tmp: string },
): Promise<CostRow> {
  const dir = await Deno.makeTempDir({ dir: o.tmp });
  if (o.processes === 0) {
    // The baseline: the same run in one process, no Redis.
    const p = spawn([
      "tools/train.ts",
      o.file,
      "--iterations",
      String(o.iterations),
      "--out",
      `${dir}/run`,
      "--backend",
      o.backend,
      "--quiet",
      "--no-status",
    ]);
    const code = await p.done;
    if (code !== 0) throw new Error(`single process exited ${code}:\n${p.out()}`);
    const timed = (await metrics(`${dir}/run`)).filter((l) => l.iter > 0);
    return {
      processes: 0,
      bootstrap_bytes: 0,
      bytes_per_iteration: 0,
      seconds_per_iteration: meanSeconds(timed),
      iterations_measured: timed.length,
    };
  }
  const redis = await redisServer(dir);
  const bus = await RedisBus.connect(redis.url, { name: "cost" });
  try {
    const workers = Array.from(
      { length: o.processes - 1 },
      (_, i) =>
        spawn([
          "tools/worker.ts",
          "--redis",
          redis.url,
          "--backend",
          o.backend,
          "--cache",
          `${dir}/cache${i}`,
        ]),
    );
    await until(() => workers.every((w) => w.out().includes("waiting for a run")), "workers");
    const out = `${dir}/run`;
    const start = await bus.netBytes();
    const c = spawn([
      "tools/train.ts",
      o.file,
      "--iterations",
      String(o.iterations),
      "--out",
      out,
      "--redis",
      redis.url,
      "--backend",
      o.backend,
      "--quiet",
      "--no-status",
    ]);
    // Bootstrap ends when the last worker serves (the coordinator publishes before its first
    // iteration, so with no worker it ends at the first metrics line).
    let ended = false;
    c.done.then(() => ended = true);
    await until(
      async () =>
        ended ||
        (o.processes > 1
          ? workers.every((w) => w.out().includes("serving as"))
          : (await metrics(out)).length > 0),
      "every worker to serve",
    );
    const served = await bus.netBytes();
    const doneBefore = (await metrics(out)).length;
    const code = await c.done;
    if (code !== 0) throw new Error(`coordinator exited ${code}:\n${c.out()}`);
    for (const w of workers) {
      const wc = await w.done;
      if (wc !== 0) throw new Error(`worker exited ${wc}:\n${w.out()}`);
    }
    const end = await bus.netBytes();
    // The iteration in flight when the last worker began is counted with the rest.
    const timed = (await metrics(out)).filter((l) => l.iter >= doneBefore && l.iter > 0);
    const n = Math.max(1, o.iterations - doneBefore);
    const sum = (b: { input: number; output: number }) => b.input + b.output;
    return {
      processes: o.processes,
      bootstrap_bytes: sum(served) - sum(start),
      bytes_per_iteration: Math.round((sum(end) - sum(served)) / n),
      seconds_per_iteration: meanSeconds(timed),
      iterations_measured: timed.length,
    };
  } finally {
    bus.close();
    await redis.stop();
  }
}

if (import.meta.main) {
  await runMain("distributed_cost", async () => {
    const { values, positionals } = parseFlags(Deno.args, COST_FLAGS, HELP);
    if (positionals.length > 1) throw new UserError("one pipeline file at most");
    const iterations = Number(values.iterations ?? 8);
    if (!Number.isInteger(iterations) || iterations < 2) {
      throw new UserError(
        `--iterations must be an integer of at least 2, got "${values.iterations}"`,
      );
    }
    const processes = (values.processes ?? "0,1,2,3").split(",").map(Number);
    if (processes.some((p) => !Number.isInteger(p) || p < 0 || p > 16)) {
      throw new UserError(`--processes must list integers from 0 to 16, got "${values.processes}"`);
    }
    const backend = parseBackend(values.backend ?? "cpu");
    const file = positionals[0] ?? DEFAULT_PIPELINE_PATH;
    const run = await resolvePipeline(await loadPipelineFile(file, { overrides: { iterations } }));
    const thetaBytes = paramCount(run.config) * 4;
    const tmp = await Deno.makeTempDir({ prefix: "esflow_cost_" });
    const rows: CostRow[] = [];
    try {
      for (const p of processes) {
        rows.push(await measure({ file, iterations, processes: p, backend, tmp }));
      }
    } finally {
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
    }
    const report = {
      cpu: cpuModel(),
      cores: navigator.hardwareConcurrency,
      backend,
      pipeline: run.spec.name,
      population: run.spec.perturb.population,
      samples: run.texts.length,
      iterations,
      theta_bytes: thetaBytes,
      rows,
    };
    if (values.json) {
      console.log(JSON.stringify(report, null, 2));
      return;
    }
    console.log(
      `${report.pipeline}: N=${report.population}, ${report.samples} samples, θ ${thetaBytes} bytes; ` +
        `${iterations} iterations on ${report.cpu} (${report.cores} cores), ${backend} backend`,
    );
    console.log(
      "| processes | bootstrap bytes | Redis bytes / iteration | of θ | s / iteration | iterations timed |",
    );
    console.log("| --- | --- | --- | --- | --- | --- |");
    for (const r of rows) {
      console.log(
        `| ${r.processes || "1, no Redis"} | ${r.bootstrap_bytes} | ${r.bytes_per_iteration} | ${
          ((100 * r.bytes_per_iteration) / thetaBytes).toFixed(3)
        }% | ${r.seconds_per_iteration?.toFixed(3) ?? "-"} | ${r.iterations_measured} |`,
      );
    }
  });
}
