// The status server answers while an iteration runs (issue 13, item 7). Each iteration here
// first blocks train's main thread for 3 s (ESFLOW_TEST_ITERATION_BLOCK_MS: Atomics.wait, no
// event-loop turn, as a big model's synchronous native kernels or a WebGPU readback wait do).
// During those blocks GET /api/status must answer within 100 ms, an SSE iteration event must
// reach the client within 1 s of its line appearing in metrics.jsonl, and POST /api/stop must
// be acknowledged at once; on both backends, with 200 event-stream clients watching. Only the server's latencies are timed, never the
// training itself.
import { assert, assertEquals, tempDir } from "./helpers.ts";
import { metricsOf, ROOT, writeSmoke } from "./reliability_helpers.ts";

const BLOCK_MS = 3000;
/** Event-stream clients watching (the issue saw 200 get nothing within 40 s). */
const CLIENTS = 200;
const TOKEN = "latency-test-token";

/** Starts train and resolves with its status URL (printed on stderr). */
async function startTrain(args: string[], env: Record<string, string>) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "tools/train.ts", ...args],
    cwd: ROOT,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    env: { NO_COLOR: "1", ESFLOW_STATUS_TOKEN: TOKEN, ...env },
  }).spawn();
  let stderr = "";
  let found: (url: string) => void = () => {};
  const url = new Promise<string>((r) => found = r);
  const drained = (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      stderr += chunk;
      const m = /status (http:\/\/127\.0\.0\.1:\d+\/)/.exec(stderr);
      if (m) found(m[1]);
    }
  })();
  const status = child.status;
  status.then(() => found(""));
  const u = await url;
  assert(u !== "", `train exited before printing its status URL:\n${stderr}`);
  return { child, url: u, status, output: () => drained.then(() => stderr) };
}

/** Milliseconds a request takes, start to end of its body. */
async function timed(
  req: () => Promise<Response>,
): Promise<{ ms: number; res: Response; body: string }> {
  const t0 = performance.now();
  const res = await req();
  const body = await res.text();
  return { ms: performance.now() - t0, res, body };
}

/** A percentile of `xs` (0..1). */
function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
}

for (const backend of ["cpu", "webgpu"]) {
  Deno.test(`status server during ${BLOCK_MS / 1000} s iterations (${backend}): GET < 100 ms, SSE < 1 s, stop at once`, async () => {
    const dir = await tempDir();
    const file = await writeSmoke(dir, { checkpointEvery: 0 });
    const out = `${dir}/run`;
    const t = await startTrain(
      [
        file,
        "--iterations",
        "6",
        "--out",
        out,
        "--backend",
        backend,
        "--status-port",
        "0",
        "--quiet",
      ],
      { ESFLOW_TEST_ITERATION_BLOCK_MS: String(BLOCK_MS) },
    );
    try {
      // Iteration events as they arrive at each of CLIENTS streams (the first is `arrived`),
      // and metrics lines as they appear on disk.
      const streams = await Promise.all(
        Array.from({ length: CLIENTS }, () => fetch(`${t.url}api/events`)),
      );
      const seen = streams.map(() => new Map<number, number>());
      const arrived = seen[0];
      const reading = Promise.all(streams.map(async (events, k) => {
        let buf = "";
        for await (const chunk of events.body!.pipeThrough(new TextDecoderStream())) {
          buf += chunk;
          for (const m of buf.matchAll(/event: iteration\nid: (\d+)\n/g)) {
            if (!seen[k].has(Number(m[1]))) seen[k].set(Number(m[1]), performance.now());
          }
          if (/event: end\n/.test(buf)) return;
        }
      }));
      const written = new Map<number, number>();
      let watching = true;
      const watch = (async () => {
        while (watching) {
          const n = (await metricsOf(out)).length;
          for (let i = 0; i < n; i++) if (!written.has(i)) written.set(i, performance.now());
          await new Promise((r) => setTimeout(r, 10));
        }
      })();

      // Requests while iterations block train's main thread: from the second iteration on, a
      // block is under way whenever no line is being written.
      const latencies: number[] = [];
      while (arrived.size < 1) await new Promise((r) => setTimeout(r, 20));
      const until = performance.now() + 2 * BLOCK_MS;
      while (performance.now() < until) {
        const r = await timed(() => fetch(`${t.url}api/status`));
        assertEquals(r.res.status, 200);
        assertEquals(JSON.parse(r.body).state, "running");
        latencies.push(r.ms);
        await new Promise((res) => setTimeout(res, 100));
      }
      // Stop, inside a block: acknowledged at once, effective after the current iteration.
      const stop = await timed(() =>
        fetch(`${t.url}api/stop`, { method: "POST", headers: { authorization: `Bearer ${TOKEN}` } })
      );
      assertEquals(stop.res.status, 202, stop.body);
      const s = await t.status;
      assertEquals(s.code, 0, await t.output());
      await reading;
      watching = false;
      await watch;

      const median = quantile(latencies, 0.5), p90 = quantile(latencies, 0.9);
      const worst = Math.max(...latencies);
      const sse = [...written].filter(([i]) => arrived.has(i)).map(([i, w]) => arrived.get(i)! - w);
      // Every client, every event: the slowest delivery after its line was written.
      const slowest = Math.max(
        ...seen.flatMap((m) => [...written].map(([i, w]) => (m.get(i) ?? Infinity) - w)),
      );
      console.log(
        `${backend}: ${latencies.length} GET /api/status during blocks: median ${
          median.toFixed(1)
        } ms, ` +
          `p90 ${p90.toFixed(1)} ms, worst ${worst.toFixed(1)} ms; SSE after the line: ${
            sse.map((x) => x.toFixed(0)).join(", ")
          } ms; slowest of ${CLIENTS} clients ${slowest.toFixed(0)} ms; stop acknowledged in ${
            stop.ms.toFixed(1)
          } ms`,
      );
      assert(latencies.length >= 10, `${latencies.length} requests`);
      // 100 ms is the promise; the 10% slack is for this 2-core machine shared with other jobs
      // (a request waits for a core like any thread), never for a blocked event loop (3000 ms).
      assert(
        p90 < 100,
        `GET /api/status p90 ${p90.toFixed(1)} ms ≥ 100 ms: ${latencies.join(", ")}`,
      );
      assert(worst < 1000, `GET /api/status worst ${worst.toFixed(1)} ms`);
      assert(stop.ms < 100, `POST /api/stop took ${stop.ms.toFixed(1)} ms`);
      assert(sse.length >= 2, `iteration events seen: ${sse.length}`);
      assert(
        Math.max(...sse) < 1000,
        `an SSE event came ${Math.max(...sse).toFixed(0)} ms after its line`,
      );
      assert(
        slowest < 1000,
        `with ${CLIENTS} clients, one got an event ${slowest.toFixed(0)} ms late`,
      );
      const lines = await metricsOf(out);
      assert(lines.length < 6, "stopped before the end");
      assertEquals([...arrived.keys()].sort((a, b) => a - b), lines.map((l) => l.iter));
    } finally {
      try {
        t.child.kill("SIGKILL");
      } catch { /* exited */ }
      await t.status;
    }
  });
}
