/**
 * `deno task bench:server`: does watching a run slow it down? Trains a small pipeline with its
 * status server up, once with no event-stream clients and once with N (default 100) connected,
 * and compares the seconds per iteration. Runs alternate (0, N, 0, N, …) so drift in the machine
 * hits both alike.
 *
 *   deno task bench:server [PIPELINE.yaml] [--clients N] [--iterations N] [--repeat N] [--json]
 *
 * The clients are fetch() streams in a second process on loopback (as browsers would be), each
 * reading and parsing every event; the bench checks each one received every iteration event.
 * Default pipeline: configs/pipelines/micro-smoke.yaml at 60 iterations.
 *
 * @module
 */
import { type CommandHelp, type DocumentedFlag, intFlag, parseFlags, runMain } from "./cli.ts";
import { UserError } from "../pipeline/errors.ts";
import { loadPipelineFile } from "../pipeline/load.ts";
import { resolvePipeline } from "../pipeline/resolve.ts";
import { type MetricsLine, runTraining } from "../pipeline/run.ts";
import { acquireGpu, type Gpu } from "../kernels/runtime.ts";
import { generateToken, LiveRun, startStatusServer, withStatusHooks } from "../server/mod.ts";

/** bench:server's flags: the parser, the usage line and `--help` all come from this table. */
export const BENCH_SERVER_FLAGS = {
  clients: {
    type: "string",
    value: "N",
    help: "event-stream clients watching in the loaded runs",
    default: "100",
  },
  iterations: {
    type: "string",
    value: "N",
    help: "iterations per run (the first few are a warm-up, not timed)",
    default: "60",
  },
  repeat: {
    type: "string",
    value: "N",
    help: "pairs of runs (0 clients, then N), alternating",
    default: "2",
  },
  json: { type: "boolean", help: "print one JSON object instead of the table" },
  "client-of": {
    type: "string",
    value: "URL",
    help: "internal: be the client process of a bench watching URL",
    default: "none",
  },
} satisfies Record<string, DocumentedFlag>;

/** What `deno task bench:server --help` says besides the flags. */
export const BENCH_SERVER_HELP: CommandHelp = {
  command: "deno task bench:server",
  args: "[PIPELINE.yaml]",
  about: "Iteration time with no event-stream client and with N watching the status server.",
  positionals: [[
    "PIPELINE.yaml",
    "the pipeline to train (default: configs/pipelines/micro-smoke.yaml)",
  ]],
  example: "deno task bench:server --clients 100 --iterations 60 --repeat 5",
};

const DEFAULT_PIPELINE = new URL("../configs/pipelines/micro-smoke.yaml", import.meta.url).pathname;

/** Iterations at the start left out of the timing: the first compiles pipelines. */
const WARMUP = 3;

interface Trial {
  clients: number;
  iterations: number;
  /** Wall seconds between consecutive iteration ends, after the warm-up. */
  medianSeconds: number;
  meanSeconds: number;
  /** Fewest and most iteration events one client received. */
  received: [number, number] | null;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** The client side, in its own process: N streams, each counting iteration events until end. */
async function runClients(url: string, n: number): Promise<void> {
  const counts = await Promise.all(Array.from({ length: n }, async () => {
    const res = await fetch(`${url}api/events`);
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "", iterations = 0;
    while (true) {
      const { value, done } = await reader.read();
      if (done) return iterations;
      buf += value;
      let i: number;
      // Parse whole events, as an EventSource would, and look at their data.
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (block.startsWith("event: iteration")) {
          JSON.parse(data!);
          iterations++;
        } else if (block.startsWith("event: end")) {
          await reader.cancel();
          return iterations;
        }
      }
    }
  }));
  console.log(JSON.stringify(counts));
}

async function trial(
  gpu: Gpu,
  file: string,
  o: { clients: number; iterations: number },
): Promise<Trial> {
  const out = await Deno.makeTempDir({ prefix: "esflow-bench-server-" });
  try {
    const loaded = await loadPipelineFile(file, {
      overrides: { iterations: o.iterations, out: `${out}/run` },
    });
    const resolved = await resolvePipeline(loaded);
    const live = new LiveRun({
      run: resolved.spec.name,
      pipelineFile: loaded.file,
      pipeline: resolved.spec as unknown as Record<string, unknown>,
      adapter: gpu.adapterName,
      total: resolved.spec.iterations,
    });
    const server = startStatusServer({
      source: live,
      token: generateToken(),
      readOnly: false,
      port: 0,
    });
    let clients: Deno.ChildProcess | null = null;
    try {
      if (o.clients > 0) {
        clients = new Deno.Command(Deno.execPath(), {
          args: [
            "run",
            "-A",
            new URL(import.meta.url).pathname,
            "--client-of",
            server.url,
            "--clients",
            String(o.clients),
          ],
          stdout: "piped",
          stderr: "inherit",
        }).spawn();
        // Train only once every client is subscribed (bounded: a minute at most).
        const deadline = Date.now() + 60_000;
        while (live.subscribers < o.clients) {
          if (Date.now() > deadline) {
            throw new UserError(`only ${live.subscribers} of ${o.clients} clients connected`);
          }
          await new Promise((r) => setTimeout(r, 20));
        }
      }
      const ends: number[] = [];
      const summary = await runTraining(
        gpu,
        resolved,
        withStatusHooks(live, { onIteration: (_l: MetricsLine) => ends.push(performance.now()) }),
      );
      live.finish(summary);
      let received: [number, number] | null = null;
      if (clients) {
        const r = await clients.output();
        const counts: number[] = JSON.parse(new TextDecoder().decode(r.stdout));
        received = [Math.min(...counts), Math.max(...counts)];
        clients = null;
      }
      const gaps = ends.slice(WARMUP).map((t, i) => (t - ends[WARMUP + i - 1]) / 1000);
      return {
        clients: o.clients,
        iterations: o.iterations,
        medianSeconds: median(gaps),
        meanSeconds: gaps.reduce((a, b) => a + b, 0) / gaps.length,
        received,
      };
    } finally {
      // Closing the server ends every stream, so a client process left over exits too.
      await server.close();
      await clients?.status;
    }
  } finally {
    await Deno.remove(out, { recursive: true });
  }
}

if (import.meta.main) {
  await runMain("bench:server", async () => {
    const { values, positionals } = parseFlags(Deno.args, BENCH_SERVER_FLAGS, BENCH_SERVER_HELP);
    const n = intFlag(values.clients, "clients", 100);
    if (values["client-of"]) return await runClients(values["client-of"], n);
    const iterations = intFlag(values.iterations, "iterations", 60);
    if (iterations <= WARMUP + 1) {
      throw new UserError(`--iterations must exceed ${WARMUP + 1} (the warm-up)`);
    }
    const repeat = intFlag(values.repeat, "repeat", 2);
    const file = positionals[0] ?? DEFAULT_PIPELINE;
    const gpu = await acquireGpu();
    const trials: Trial[] = [];
    try {
      for (let r = 0; r < repeat; r++) {
        for (const clients of [0, n]) {
          const t = await trial(gpu, file, { clients, iterations });
          trials.push(t);
          if (!values.json) {
            console.error(
              `clients ${String(clients).padStart(3)}: median ${
                (t.medianSeconds * 1000).toFixed(1)
              } ms/iteration, mean ${(t.meanSeconds * 1000).toFixed(1)} ms` +
                (t.received ? `, events per client ${t.received[0]}..${t.received[1]}` : ""),
            );
          }
          if (t.received && t.received[0] !== iterations) {
            throw new Error(`a client missed events: received ${t.received.join("..")}`);
          }
        }
      }
    } finally {
      gpu.destroy();
    }
    const of = (c: number) => trials.filter((t) => t.clients === c).map((t) => t.medianSeconds);
    const base = median(of(0)), loaded = median(of(n));
    if (values.json) {
      console.log(JSON.stringify({ adapter: gpu.adapterName, file, iterations, trials }));
    } else {
      console.log(
        `${gpu.adapterName}, ${file}, ${iterations} iterations × ${repeat}\n` +
          `  0 clients:   ${(base * 1000).toFixed(1)} ms per iteration (median)\n` +
          `  ${n} clients: ${(loaded * 1000).toFixed(1)} ms per iteration (median), ${
            ((loaded / base - 1) * 100).toFixed(1)
          }% vs none`,
      );
    }
  });
}
