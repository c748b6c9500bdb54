/**
 * `deno run -A tools/bench_distributed.ts`: seconds per iteration with 1, 2 and 3 processes
 * sharing one population through Redis, against the plain single process, and the bytes that
 * cross Redis per iteration against the bytes of θ.
 *
 *   deno run -A tools/bench_distributed.ts [PIPELINE] [--iterations N] [--json]
 *
 * Default pipeline: configs/pipelines/tiny-austen.yaml for 6 iterations. It starts its own
 * redis-server (no persistence, a unix socket in a temp dir) and stops it by PID. Iteration 0
 * (shader compiles in every process) is left out of the means. Bytes are Redis's own counters
 * (INFO total_net_input_bytes + total_net_output_bytes), so they include polling and replies.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { DEFAULT_PIPELINE_PATH, loadPipelineFile } from "../pipeline/load.ts";
import { resolvePipeline } from "../pipeline/resolve.ts";
import { RedisBus } from "../pipeline/distributed.ts";
import { adapterLimits } from "../kernels/runtime.ts";
import { paramCount } from "../model/presets.ts";

const ROOT = new URL("..", import.meta.url).pathname;

interface Row {
  processes: number;
  redis: boolean;
  seconds_per_iteration: number;
  bytes_per_iteration?: number;
}

async function redisServer(dir: string): Promise<{ url: string; stop: () => Promise<void> }> {
  const sock = `${dir}/redis.sock`;
  const child = new Deno.Command("redis-server", {
    args: ["--port", "0", "--unixsocket", sock, "--save", "", "--appendonly", "no", "--dir", dir],
    stdout: "null",
    stderr: "null",
  }).spawn();
  for (let i = 0; i < 200; i++) {
    try {
      (await Deno.connect({ transport: "unix", path: sock })).close();
      break;
    } catch {
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

function spawn(args: string[]): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...args],
    cwd: ROOT,
    stdout: "null",
    stderr: "piped",
  }).spawn();
}

async function secondsPerIteration(out: string): Promise<number> {
  const lines = (await Deno.readTextFile(`${out}/metrics.jsonl`)).trim().split("\n")
    .map((l) => JSON.parse(l) as { iter: number; seconds: number });
  const timed = lines.filter((l) => l.iter > 0);
  return timed.reduce((a, l) => a + l.seconds, 0) / timed.length;
}

async function must(p: Deno.ChildProcess, what: string): Promise<void> {
  const r = await p.output();
  if (r.code !== 0) {
    throw new Error(`${what} exited ${r.code}: ${new TextDecoder().decode(r.stderr)}`);
  }
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    options: { iterations: { type: "string" }, json: { type: "boolean" } },
    allowPositionals: true,
  });
  const file = positionals[0] ?? DEFAULT_PIPELINE_PATH;
  const iterations = Number(values.iterations ?? 6);
  const resolved = await resolvePipeline(
    await loadPipelineFile(file, { overrides: { iterations } }),
  );
  const thetaBytes = paramCount(resolved.config) * 4;
  const adapter = (await adapterLimits())?.adapterName ?? "no adapter";
  const tmp = await Deno.makeTempDir({ prefix: "esflow_bench_dist_" });
  const common = [file, "--iterations", String(iterations), "--quiet", "--no-status"];
  const rows: Row[] = [];
  try {
    // The baseline: one process, no Redis.
    await must(spawn(["tools/train.ts", ...common, "--out", `${tmp}/plain`]), "single process");
    rows.push({
      processes: 1,
      redis: false,
      seconds_per_iteration: await secondsPerIteration(`${tmp}/plain`),
    });

    for (const processes of [1, 2, 3]) {
      const redis = await redisServer(await Deno.makeTempDir({ dir: tmp }));
      const bus = await RedisBus.connect(redis.url, { name: "bench" });
      try {
        const workers = Array.from(
          { length: processes - 1 },
          () => spawn(["tools/worker.ts", "--redis", redis.url, "--quiet"]),
        );
        // Let workers connect and wait, so every process is there from iteration 0.
        await new Promise((r) => setTimeout(r, 1500));
        const before = await bus.netBytes();
        const out = `${tmp}/n${processes}`;
        await must(
          spawn(["tools/train.ts", ...common, "--out", out, "--redis", redis.url]),
          `coordinator with ${processes - 1} workers`,
        );
        for (const w of workers) await must(w, "worker");
        const after = await bus.netBytes();
        rows.push({
          processes,
          redis: true,
          seconds_per_iteration: await secondsPerIteration(out),
          bytes_per_iteration: Math.round(
            (after.input - before.input + after.output - before.output) / iterations,
          ),
        });
      } finally {
        bus.close();
        await redis.stop();
      }
    }
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
  const report = {
    adapter,
    pipeline: resolved.spec.name,
    population: resolved.spec.perturb.population,
    iterations,
    theta_bytes: thetaBytes,
    cpus: navigator.hardwareConcurrency,
    rows,
  };
  if (values.json) {
    console.log(JSON.stringify(report, null, 2));
  } else {
    console.log(
      `${report.pipeline} (N=${report.population}, ${iterations} iterations) on ${adapter}, ${report.cpus} CPUs; θ = ${thetaBytes} bytes`,
    );
    console.log("| processes | via Redis | s / iteration | Redis bytes / iteration | of θ |");
    console.log("| --------- | --------- | ------------- | ----------------------- | ---- |");
    for (const r of rows) {
      const b = r.bytes_per_iteration;
      console.log(
        `| ${r.processes} | ${r.redis ? "yes" : "no"} | ${r.seconds_per_iteration.toFixed(3)} | ${
          b ?? "-"
        } | ${b === undefined ? "-" : `${((100 * b) / thetaBytes).toFixed(3)}%`} |`,
      );
    }
  }
}
