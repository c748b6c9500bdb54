// The status server's API contract against real runs of the micro-smoke pipeline: every
// endpoint's fields and types, SSE framing, Prometheus exposition format (a strict parser here),
// 4xx answers, the stop token, path traversal, serve mode, and a slow client that never reads.
import { assert, assertEquals, runCli, tempDir } from "./helpers.ts";
import { acquireGpu } from "../kernels/runtime.ts";
import { loadPipelineFile } from "../pipeline/load.ts";
import { resolvePipeline } from "../pipeline/resolve.ts";
import { type MetricsLine, runTraining } from "../pipeline/run.ts";
import {
  createStatusApp,
  hostNamesServer,
  LiveRun,
  RunDirSource,
  type RunEvent,
  type RunSnapshot,
  type RunSource,
  startStatusServer,
  withStatusHooks,
} from "../server/mod.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const SMOKE = `${ROOT}configs/pipelines/micro-smoke.yaml`;
const TOKEN = "test-token-0123456789";

// ---- SSE and Prometheus parsers, strict ----------------------------------------------------

interface SseEvent {
  event: string;
  data: string;
  id?: string;
}

/**
 * Reads an SSE body until `done(events)` holds. Every line must be a known field, a comment or
 * blank; an event's data must be one line (our JSON has none). Returns events and comments.
 */
async function readSse(
  body: ReadableStream<Uint8Array>,
  done: (events: SseEvent[], comments: string[]) => boolean,
): Promise<{ events: SseEvent[]; comments: string[]; retry: number[] }> {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  const events: SseEvent[] = [], comments: string[] = [], retry: number[] = [];
  let buf = "";
  let cur: Partial<SseEvent> & { fields: number } = { fields: 0 };
  try {
    while (!done(events, comments)) {
      const { value, done: eof } = await reader.read();
      if (eof) {
        throw new Error(`stream ended before the expected events: ${JSON.stringify(events)}`);
      }
      buf += value;
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line === "") {
          if (cur.fields > 0 && cur.event !== undefined) {
            assert(cur.data !== undefined, `event ${cur.event} without data`);
            events.push({ event: cur.event, data: cur.data!, id: cur.id });
          }
          cur = { fields: 0 };
        } else if (line.startsWith(":")) comments.push(line.slice(1).trim());
        else {
          const m = /^(event|data|id|retry): (.*)$/.exec(line);
          assert(m, `not an SSE field line: ${JSON.stringify(line)}`);
          const [, field, v] = m;
          if (field === "retry") retry.push(Number(v));
          else {
            assert(cur[field as "event"] === undefined, `field ${field} twice in one event`);
            cur[field as "event" | "data" | "id"] = v;
            cur.fields++;
          }
        }
      }
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
  return { events, comments, retry };
}

interface PromSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/**
 * Parses Prometheus text exposition format 0.0.4 strictly: HELP and TYPE lines (TYPE before any
 * sample of its metric, at most once), metric and label name syntax, quoted label values with
 * only \\, \" and \n escapes, float values (NaN, ±Inf allowed), optional integer timestamps.
 */
function parsePrometheus(text: string): { samples: PromSample[]; types: Map<string, string> } {
  const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
  const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
  const FLOAT = /^(?:[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|NaN|[+-]Inf)$/;
  assert(text.endsWith("\n"), "exposition text must end with a newline");
  const types = new Map<string, string>(), helps = new Set<string>(), seen = new Set<string>();
  const samples: PromSample[] = [];
  for (const [i, line] of text.slice(0, -1).split("\n").entries()) {
    const where = `line ${i + 1}: ${JSON.stringify(line)}`;
    if (line.startsWith("#")) {
      const m = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line);
      if (!m) {
        assert(!/^# (HELP|TYPE)/.test(line), `malformed ${where}`);
        continue;
      }
      const [, kind, name, rest] = m;
      assert(NAME.test(name), `bad metric name, ${where}`);
      if (kind === "TYPE") {
        assert(
          ["counter", "gauge", "histogram", "summary", "untyped"].includes(rest),
          `bad type, ${where}`,
        );
        assert(!types.has(name), `TYPE twice, ${where}`);
        assert(!seen.has(name), `TYPE after samples, ${where}`);
        types.set(name, rest);
      } else {
        assert(!helps.has(name), `HELP twice, ${where}`);
        assert(!/\\[^\\n]/.test(rest), `bad escape in HELP, ${where}`);
        helps.add(name);
      }
      continue;
    }
    assert(line.trim() !== "", `blank line inside the text, ${where}`);
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: (-?\d+))?$/.exec(line);
    assert(m, `malformed sample, ${where}`);
    const [, name, labelText, value] = m;
    assert(FLOAT.test(value), `bad value, ${where}`);
    const labels: Record<string, string> = {};
    if (labelText !== undefined && labelText !== "") {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)/y;
      let pos = 0;
      while (pos < labelText.length) {
        re.lastIndex = pos;
        const lm = re.exec(labelText);
        assert(lm, `bad labels at ${pos}, ${where}`);
        assert(LABEL.test(lm[1]) && !(lm[1] in labels), `bad or repeated label, ${where}`);
        labels[lm[1]] = lm[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
        pos = re.lastIndex;
      }
    }
    seen.add(name);
    samples.push({
      name,
      labels,
      value: value === "NaN"
        ? NaN
        : value.endsWith("Inf")
        ? Number(value.replace("Inf", "Infinity"))
        : Number(value),
    });
  }
  return { samples, types };
}

Deno.test("the Prometheus parser rejects what the format forbids", () => {
  const bad = [
    "x 1", // no newline at the end
    "# TYPE x gauge\n# TYPE x gauge\n",
    "x 1\n# TYPE x gauge\n",
    "9x 1\n",
    'x{a="1} 1\n',
    "x{a=1} 1\n",
    "x one\n",
    'x{a="\\t"} 1\n',
    "\nx 1\n",
  ];
  for (const t of bad) {
    let threw = false;
    try {
      parsePrometheus(t);
    } catch {
      threw = true;
    }
    assert(threw, `accepted ${JSON.stringify(t)}`);
  }
  const ok = parsePrometheus('# HELP x a\n# TYPE x gauge\nx{a="q\\"\\n",b="2"} -1.5e-3\nx NaN\n');
  assertEquals(ok.samples[0].labels, { a: 'q"\n', b: "2" });
});

// ---- shared helpers -----------------------------------------------------------------------

/** Spawns a command and collects its output; `line(re)` waits for a matching output line. */
function spawn(args: string[], env: Record<string, string> = {}) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...env },
  }).spawn();
  let text = "";
  const waiters: (() => void)[] = [];
  const drain = async (s: ReadableStream<Uint8Array>) => {
    for await (const chunk of s.pipeThrough(new TextDecoderStream())) {
      text += chunk;
      waiters.splice(0).forEach((w) => w());
    }
  };
  const drained = Promise.all([drain(child.stdout), drain(child.stderr)]);
  const ended = drained.then(() => child.status);
  ended.then(() => waiters.splice(0).forEach((w) => w()));
  return {
    child,
    get output() {
      return text;
    },
    async line(re: RegExp): Promise<RegExpExecArray> {
      let exited = false;
      ended.then(() => exited = true);
      while (true) {
        const m = re.exec(text);
        if (m) return m;
        if (exited) throw new Error(`exited before printing ${re}:\n${text}`);
        await new Promise<void>((r) => waiters.push(r));
      }
    },
    status: ended,
  };
}

const TRAVERSALS = [
  "/../../etc/passwd",
  "/%2e%2e/%2e%2e/etc/passwd",
  "/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
  "/assets/..%2f..%2f..%2fdeno.json",
  "/assets/%2e%2e%2f%2e%2e%2fmetrics.jsonl",
  "/assets/__proto__",
  "/assets/constructor",
  "/api/../metrics.jsonl",
  "/metrics.jsonl",
  "/final/state.json",
  "/..%5c..%5cdeno.json",
  "//etc/passwd",
];

/** Raw HTTP/1.1 GET of a path as given (fetch would normalise `..` away). */
async function rawGet(port: number, path: string): Promise<{ status: number; body: string }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(
    new TextEncoder().encode(
      `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`,
    ),
  );
  let text = "";
  for await (const c of conn.readable.pipeThrough(new TextDecoderStream())) text += c;
  return { status: Number(text.split(" ")[1]), body: text };
}

async function assertNoTraversal(base: string, port: number) {
  const leaks = /root:|"imports"|"iter":|esflow-run-state/;
  for (const path of TRAVERSALS) {
    const raw = await rawGet(port, path);
    assert(raw.status === 404 || raw.status === 400, `${path} (raw): HTTP ${raw.status}`);
    assert(!leaks.test(raw.body), `${path} (raw) leaked a file:\n${raw.body}`);
    const r = await fetch(base.replace(/\/$/, "") + path);
    const body = await r.text();
    assert(r.status === 404 || r.status === 400, `${path}: HTTP ${r.status}`);
    assert(!leaks.test(body), `${path} leaked a file:\n${body}`);
  }
}

async function json(r: Response): Promise<unknown> {
  assert(
    (r.headers.get("content-type") ?? "").startsWith("application/json"),
    `content-type ${r.headers.get("content-type")}`,
  );
  return await r.json();
}

const STATUS_TYPES: Record<string, string[]> = {
  run: ["string"],
  pipeline: ["string", "null"],
  adapter: ["string", "null"],
  state: ["string"],
  error: ["string", "null"],
  iteration: ["number"],
  total: ["number", "null"],
  fitness_mean: ["number", "null"],
  fitness_max: ["number", "null"],
  fitness_min: ["number", "null"],
  eval_loss: ["number", "null"],
  eval_iteration: ["number", "null"],
  sigma: ["number", "null"],
  alpha: ["number", "null"],
  tokens_per_s: ["number", "null"],
  fitness_std: ["number", "null"],
  fitness_spread: ["number", "null"],
  update_norm_expected: ["number", "null"],
  update_ratio_expected: ["number", "null"],
  pair_snr: ["number", "null"],
  // A reward run's (server/status.ts StatusBody): null for a log-likelihood run.
  reward_mean: ["number", "null"],
  reward_max: ["number", "null"],
  reward_min: ["number", "null"],
  eval_reward: ["number", "null"],
  eval_reward_iteration: ["number", "null"],
  seconds_per_iteration: ["number", "null"],
  eta_seconds: ["number", "null"],
  planned_memory_bytes: ["number", "null"],
  read_only: ["boolean"],
  sse_clients: ["number"],
};

function checkStatusTypes(s: Record<string, unknown>) {
  assertEquals(Object.keys(s).sort(), Object.keys(STATUS_TYPES).sort(), "status keys");
  for (const [k, types] of Object.entries(STATUS_TYPES)) {
    const t = s[k] === null ? "null" : typeof s[k];
    assert(types.includes(t), `status.${k} is ${t}, expected ${types.join("|")}`);
  }
  assert(["running", "finished", "stopped", "failed", "crashed"].includes(s.state as string));
}

const METRIC_KEYS = [
  "iter",
  "fitness_mean",
  "fitness_max",
  "fitness_min",
  "sigma",
  "alpha",
  "seconds",
  "tokens_per_s",
  "fitness_std",
  "fitness_spread",
  "update_norm_expected",
];

// ---- a live run through the library ---------------------------------------------------------

Deno.test("live run: status, metrics, config, events, Prometheus, errors, traversal", async () => {
  const tmp = await tempDir();
  const out = `${tmp}/run`;
  const loaded = await loadPipelineFile(SMOKE, { overrides: { out, iterations: 4 } });
  const resolved = await resolvePipeline(loaded);
  const gpu = await acquireGpu();
  const live = new LiveRun({
    run: resolved.spec.name,
    pipelineFile: loaded.file,
    pipeline: resolved.spec as unknown as Record<string, unknown>,
    adapter: gpu.adapterName,
    total: resolved.spec.iterations,
    plannedMemoryBytes: 12345,
  });
  const server = startStatusServer({
    source: live,
    token: TOKEN,
    readOnly: false,
    port: 0,
    heartbeatMs: 20,
  });
  const base = server.url;
  try {
    // Before the first iteration: running, no metrics yet.
    const s0 = await json(await fetch(`${base}api/status`)) as Record<string, unknown>;
    checkStatusTypes(s0);
    assertEquals([s0.state, s0.iteration, s0.total, s0.fitness_mean], ["running", 0, 4, null]);

    // Two clients from the start: both must see the whole run.
    const streams = await Promise.all([0, 1].map(() => fetch(`${base}api/events`)));
    for (const r of streams) {
      assertEquals(r.status, 200);
      assert(r.headers.get("content-type")!.startsWith("text/event-stream"));
    }
    const untilEndAndHeartbeat = (e: SseEvent[], c: string[]) =>
      e.some((x) => x.event === "end") && c.includes("heartbeat");
    const reading = streams.map((r) => readSse(r.body!, untilEndAndHeartbeat));
    const summary = await runTraining(gpu, resolved, withStatusHooks(live, {}));
    live.finish(summary);
    const fileLines: MetricsLine[] = (await Deno.readTextFile(`${out}/metrics.jsonl`)).trim()
      .split("\n").map((l) => JSON.parse(l));

    for (const got of await Promise.all(reading)) {
      const { events, retry } = got;
      assert(retry.length === 1 && retry[0] > 0, "one retry field at the start");
      const its = events.filter((e) => e.event === "iteration");
      assertEquals(its.map((e) => JSON.parse(e.data)), fileLines, "one iteration event each");
      assertEquals(its.map((e) => e.id), ["0", "1", "2", "3"]);
      const ck = events.filter((e) => e.event === "checkpoint").map((e) => JSON.parse(e.data));
      assertEquals(ck, [{ dir: `${out}/final`, iteration: 4 }]);
      assertEquals(events.at(-1)!.event, "end");
      assertEquals(JSON.parse(events.at(-1)!.data), { state: "finished" });
      assertEquals(events.filter((e) => e.event === "end").length, 1);
    }

    // /api/status after the end.
    const s = await json(await fetch(`${base}api/status`)) as Record<string, unknown>;
    checkStatusTypes(s);
    const last = fileLines.at(-1)!;
    assertEquals(s.run, "micro-smoke");
    assertEquals(s.pipeline, loaded.file);
    assertEquals(s.adapter, gpu.adapterName);
    assertEquals([s.state, s.error, s.iteration, s.total], ["finished", null, 4, 4]);
    assertEquals([s.fitness_mean, s.fitness_max, s.fitness_min], [
      last.fitness_mean,
      last.fitness_max,
      last.fitness_min,
    ]);
    assertEquals([s.eval_loss, s.eval_iteration], [last.eval_loss, 3]);
    assertEquals([s.sigma, s.alpha, s.tokens_per_s], [last.sigma, last.alpha, last.tokens_per_s]);
    // The step's diagnostics from tell: the spread, the expected ‖Δθ‖ and its ratio to the
    // measured ‖θ_t‖; no pair SNR, as micro-smoke has no antithetic pairs.
    assertEquals(
      [s.fitness_std, s.fitness_spread, s.update_norm_expected, s.update_ratio_expected],
      [
        last.fitness_std,
        last.fitness_spread,
        last.update_norm_expected,
        last.update_ratio_expected,
      ],
    );
    assert((s.fitness_std as number) > 0 && (s.update_norm_expected as number) > 0);
    const ratio = s.update_ratio_expected as number;
    assert(ratio > 0 && ratio < 1, `update_ratio_expected ${ratio}: ‖Δθ‖ a small part of ‖θ‖`);
    assertEquals(s.pair_snr, null);
    assertEquals([s.eta_seconds, s.planned_memory_bytes, s.read_only], [0, 12345, false]);
    assert((s.seconds_per_iteration as number) > 0);

    // /api/metrics and ?since.
    const all = await json(await fetch(`${base}api/metrics`)) as MetricsLine[];
    assertEquals(all, fileLines);
    for (const l of all) {
      for (const k of METRIC_KEYS) assertEquals(typeof l[k as "iter"], "number", k);
    }
    assertEquals(
      (await json(await fetch(`${base}api/metrics?since=1`)) as MetricsLine[]).map((l) => l.iter),
      [2, 3],
    );
    assertEquals(await json(await fetch(`${base}api/metrics?since=-1`)), fileLines);
    assertEquals(await json(await fetch(`${base}api/metrics?since=3`)), []);
    for (const bad of ["abc", "1.5", "", "1e3", "0x1", "1&since=2", "%201"]) {
      const r = await fetch(`${base}api/metrics?since=${bad}`);
      assertEquals(r.status, 400, `since=${bad}`);
      const e = await json(r) as { error: string };
      assert(/since/.test(e.error), e.error);
    }

    // /api/config: the resolved pipeline.
    const cfg = await json(await fetch(`${base}api/config`)) as Record<string, unknown>;
    assertEquals(cfg, JSON.parse(JSON.stringify(resolved.spec)));

    // /api/events after the end: ?since replays, then `end` at once.
    const late = await readSse(
      (await fetch(`${base}api/events?since=1`)).body!,
      (e) => e.some((x) => x.event === "end"),
    );
    assertEquals(late.events.map((e) => e.event), ["iteration", "iteration", "end"]);
    assertEquals(late.events.map((e) => e.id), ["2", "3", undefined]);
    const lastId = await readSse(
      (await fetch(`${base}api/events`, { headers: { "Last-Event-ID": "2" } })).body!,
      (e) => e.some((x) => x.event === "end"),
    );
    assertEquals(lastId.events.map((e) => e.id), ["3", undefined]);
    assertEquals((await fetch(`${base}api/events?since=x`)).status, 400);

    // /metrics: valid exposition text carrying the status values.
    const pr = await fetch(`${base}metrics`);
    assert(pr.headers.get("content-type")!.startsWith("text/plain; version=0.0.4"));
    const prom = parsePrometheus(await pr.text());
    const value = (n: string) => {
      const found = prom.samples.filter((x) => x.name === n);
      assertEquals(found.length, 1, n);
      assertEquals(found[0].labels, { run: "micro-smoke" }, n);
      return found[0].value;
    };
    assertEquals(value("esflow_iteration"), 4);
    assertEquals(value("esflow_iterations_planned"), 4);
    assertEquals(value("esflow_fitness_mean"), last.fitness_mean);
    assertEquals(value("esflow_fitness_max"), last.fitness_max);
    assertEquals(value("esflow_fitness_min"), last.fitness_min);
    assertEquals(value("esflow_eval_loss"), last.eval_loss);
    assertEquals(value("esflow_sigma"), last.sigma);
    assertEquals(value("esflow_alpha"), last.alpha);
    assertEquals(value("esflow_tokens_per_second"), last.tokens_per_s);
    assertEquals(value("esflow_planned_memory_bytes"), 12345);
    for (const n of prom.types.keys()) assertEquals(prom.types.get(n), "gauge");
    // Prometheus keeps `_total` for counters: no gauge carries it.
    for (const n of prom.types.keys()) assert(!n.endsWith("_total"), `${n} is a gauge`);

    // The dashboard (or its placeholder) and 404s.
    const page = await fetch(base);
    assertEquals(page.status, 200);
    assert(page.headers.get("content-type")!.startsWith("text/html"));
    assert(/<html/i.test(await page.text()));
    for (const p of ["api/nope", "api", "api/status/x", "assets/nope.js", "favicon.ico"]) {
      const r = await fetch(`${base}${p}`);
      assertEquals(r.status, 404, p);
      assert(typeof ((await json(r)) as { error: string }).error === "string");
    }

    // Methods and the token.
    const stop = (auth?: string) =>
      fetch(`${base}api/stop`, { method: "POST", headers: auth ? { authorization: auth } : {} });
    let r = await stop();
    assertEquals(r.status, 401);
    assert(r.headers.get("www-authenticate")?.startsWith("Bearer"));
    assert(/Bearer/.test(((await json(r)) as { error: string }).error));
    assertEquals((await (r = await stop("Bearer wrong-token"), r.text()), r.status), 401);
    assertEquals((await (r = await stop(`Basic ${TOKEN}`), r.text()), r.status), 401);
    r = await stop(`Bearer ${TOKEN}`);
    assertEquals(r.status, 409, "the run has finished: nothing to stop");
    await r.body?.cancel();
    for (
      const [method, path, auth, want] of [
        ["PUT", "api/status", undefined, 401],
        ["DELETE", "nope", undefined, 401],
        ["PUT", "api/status", `Bearer ${TOKEN}`, 405],
        ["GET", "api/stop", undefined, 405],
        ["DELETE", "nope", `Bearer ${TOKEN}`, 404],
        ["OPTIONS", "api/status", undefined, 401],
      ] as const
    ) {
      const res = await fetch(`${base}${path}`, {
        method,
        headers: auth ? { authorization: auth } : {},
      });
      await res.body?.cancel();
      assertEquals(res.status, want, `${method} /${path}`);
    }
    const head = await fetch(`${base}api/events`, { method: "HEAD" });
    assertEquals(head.status, 200);

    await assertNoTraversal(base, server.port);
    // Every event stream above has closed: none is left subscribed.
    assertEquals(live.subscribers, 0);
  } finally {
    await server.close();
    gpu.destroy();
  }
});

// ---- the train CLI: stop with the token; a taken port ------------------------------------

Deno.test("train --status-port 0: POST /api/stop with the token stops early with a checkpoint", async () => {
  const tmp = await tempDir();
  const out = `${tmp}/run`;
  const p = spawn(
    ["tools/train.ts", SMOKE, "--iterations", "400", "--out", out, "--status-port", "0", "--quiet"],
    { ESFLOW_STATUS_TOKEN: TOKEN },
  );
  try {
    const url = (await p.line(/status (http:\/\/127\.0\.0\.1:\d+\/)/))[1];
    assert(!p.output.includes(TOKEN), "a token from the environment is not printed");
    // Wait for two iterations through the event stream (no clock involved).
    await readSse(
      (await fetch(`${url}api/events`)).body!,
      (e) => e.filter((x) => x.event === "iteration").length >= 2,
    );
    const s = await (await fetch(`${url}api/status`)).json();
    assertEquals(s.state, "running");
    assertEquals(s.total, 400);
    assert(s.planned_memory_bytes > 0, "train reports the plan's memory");
    let r = await fetch(`${url}api/stop`, { method: "POST" });
    assertEquals(r.status, 401);
    await r.body?.cancel();
    const events = fetch(`${url}api/events`);
    r = await fetch(`${url}api/stop`, {
      method: "POST",
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    assertEquals(r.status, 202);
    await r.body?.cancel();
    const tail = await readSse((await events).body!, (e) => e.some((x) => x.event === "end"));
    assertEquals(JSON.parse(tail.events.at(-1)!.data), { state: "stopped" });
    const ck = tail.events.filter((e) => e.event === "checkpoint").map((e) => JSON.parse(e.data));
    assertEquals(ck.length, 1);
    assertEquals((await p.status).code, 0, p.output);
    const lines = (await Deno.readTextFile(`${out}/metrics.jsonl`)).trim().split("\n");
    assert(lines.length < 400, "stopped early");
    assertEquals(ck[0], {
      dir: `${out}/checkpoints/iter-${lines.length}`,
      iteration: lines.length,
    });
    const state = JSON.parse(await Deno.readTextFile(`${ck[0].dir}/state.json`));
    assertEquals(state.iteration, lines.length);
    // From the files, the same run reads as stopped.
    const snap = await (await RunDirSource.open(out)).snapshot();
    assertEquals([snap.state, snap.iteration, snap.total], ["stopped", lines.length, 400]);
  } finally {
    try {
      p.child.kill();
    } catch { /* exited */ }
    await p.status;
  }
});

Deno.test("train: a taken status port is one line and exit 2 before anything is written", async () => {
  const tmp = await tempDir();
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const port = String((taken.addr as Deno.NetAddr).port);
    const r = await runCli(["tools/train.ts", SMOKE, "--out", `${tmp}/r`, "--status-port", port]);
    assertEquals(r.code, 2, r.stderr);
    const lines = r.stderr.trim().split("\n");
    assertEquals(lines.length, 1, r.stderr);
    assert(lines[0].includes(`port ${port}`) && lines[0].includes("--status-port"), lines[0]);
    let exists = true;
    await Deno.stat(`${tmp}/r`).catch(() => exists = false);
    assert(!exists, "nothing written");
    const bad = await runCli(["tools/train.ts", SMOKE, "--out", `${tmp}/r`, "--status-port", "x"]);
    assertEquals(bad.code, 2);
    assert(/--status-port must be/.test(bad.stderr), bad.stderr);
  } finally {
    taken.close();
  }
});

Deno.test("train: the pipeline's port taken, the server moves to the next free one and says so", async () => {
  const tmp = await tempDir();
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const port = (taken.addr as Deno.NetAddr).port;
    // A second train on the same machine, its pipeline naming the port the first one holds.
    const file = `${tmp}/p.yaml`;
    await Deno.writeTextFile(
      file,
      (await Deno.readTextFile(SMOKE))
        .replace("status: { port: 0 }", `status: { port: ${port} }`)
        .replaceAll("../../data/", `${ROOT}data/`),
    );
    const r = await runCli([
      "tools/train.ts",
      file,
      "--iterations",
      "1",
      "--out",
      `${tmp}/r`,
      "--quiet",
    ]);
    assertEquals(r.code, 0, r.stderr);
    const m = /esflow train: status http:\/\/127\.0\.0\.1:(\d+)\/ \(port (\d+) was in use; stop: /
      .exec(r.stderr);
    assert(m, r.stderr);
    assertEquals(Number(m[2]), port);
    assert(Number(m[1]) > port && Number(m[1]) <= port + 50, `moved to ${m[1]}`);
  } finally {
    taken.close();
  }
});

// ---- serve mode ---------------------------------------------------------------------------

Deno.test("serve RUN_DIR: the same API, read-only; crashed and stopped from the files", async () => {
  const tmp = await tempDir();
  const out = `${tmp}/run`;
  const t = await runCli(["tools/train.ts", SMOKE, "--out", out, "--no-status", "--quiet"]);
  assertEquals(t.code, 0, t.stderr);
  assert(!/status http/.test(t.stderr), "--no-status starts no server");
  const p = spawn(["tools/serve.ts", out, "--port", "0"]);
  try {
    const url = (await p.line(/status (http:\/\/127\.0\.0\.1:\d+\/)/))[1];
    const s = await json(await fetch(`${url}api/status`)) as Record<string, unknown>;
    checkStatusTypes(s);
    assertEquals([s.run, s.state, s.iteration, s.total, s.read_only], [
      "micro-smoke",
      "finished",
      3,
      3,
      true,
    ]);
    assert((s.planned_memory_bytes as number) > 0);
    const lines = (await Deno.readTextFile(`${out}/metrics.jsonl`)).trim().split("\n")
      .map((l) => JSON.parse(l));
    assertEquals(await json(await fetch(`${url}api/metrics`)), lines);
    // The diagnostics come from the latest line on disk, as in a live run.
    assertEquals([s.fitness_std, s.fitness_spread, s.update_norm_expected, s.pair_snr], [
      lines.at(-1).fitness_std,
      lines.at(-1).fitness_spread,
      lines.at(-1).update_norm_expected,
      null,
    ]);
    assertEquals(await json(await fetch(`${url}api/metrics?since=0`)), lines.slice(1));
    assertEquals((await fetch(`${url}api/metrics?since=zero`)).status, 400);
    const cfg = await json(await fetch(`${url}api/config`)) as Record<string, unknown>;
    assertEquals([cfg.name, cfg.iterations], ["micro-smoke", 3]);
    const ev = await readSse(
      (await fetch(`${url}api/events`)).body!,
      (e) => e.some((x) => x.event === "end"),
    );
    assertEquals(ev.events.map((e) => [e.event, e.data]), [["end", '{"state":"finished"}']]);
    parsePrometheus(await (await fetch(`${url}metrics`)).text());
    for (const auth of [undefined, "Bearer anything"]) {
      const r = await fetch(`${url}api/stop`, {
        method: "POST",
        headers: auth ? { authorization: auth } : {},
      });
      assertEquals(r.status, 405);
      assert(/read-only/.test(((await json(r)) as { error: string }).error));
    }
    const port = Number(new URL(url).port);
    await assertNoTraversal(url, port);
    // The dashboard names the last checkpoint, which a run dir announces with no event.
    const page = await (await fetch(url)).text();
    assert(page.includes('<p id="checkpoint">iteration 3</p>'), "last checkpoint on the page");
  } finally {
    p.child.kill("SIGINT");
    await p.status;
  }

  // Without final/ and no checkpoint: crashed. With a checkpoint of the last iteration: stopped.
  await Deno.rename(`${out}/final`, `${tmp}/final`);
  let snap = await (await RunDirSource.open(out)).snapshot();
  assertEquals([snap.state, snap.iteration, snap.total, snap.pipeline], ["crashed", 3, null, null]);
  await Deno.mkdir(`${out}/checkpoints`);
  await Deno.rename(`${tmp}/final`, `${out}/checkpoints/iter-3`);
  snap = await (await RunDirSource.open(out)).snapshot();
  assertEquals([snap.state, snap.iteration], ["stopped", 3]);
  await Deno.writeTextFile(
    `${out}/metrics.jsonl`,
    JSON.stringify({
      ...JSON.parse((await Deno.readTextFile(`${out}/metrics.jsonl`)).split("\n")[0]),
      iter: 3,
    }) +
      '\n{"iter": 4, "fitn',
    { append: true },
  );
  snap = await (await RunDirSource.open(out)).snapshot();
  assertEquals([snap.state, snap.iteration], ["crashed", 4], "a torn last line is skipped");
});

Deno.test("serve: an unknown or empty run dir is one line and exit 2", async () => {
  const tmp = await tempDir();
  for (const dir of [`${tmp}/nothing-here`, tmp]) {
    const r = await runCli(["tools/serve.ts", dir, "--port", "0"]);
    assertEquals(r.code, 2, r.stderr);
    assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert(r.stderr.includes(dir), r.stderr);
  }
  const r = await runCli(["tools/serve.ts"]);
  assertEquals(r.code, 2);
});

// ---- clients never disturb the run ----------------------------------------------------------

/** A source whose events the test fires by hand. */
function fakeSource(): RunSource & { emit(e: RunEvent): void; listeners: number } {
  const ls = new Set<(e: RunEvent) => void>();
  const snap: RunSnapshot = {
    run: "fake",
    pipelineFile: null,
    pipeline: null,
    adapter: null,
    state: "running",
    error: null,
    iteration: 0,
    total: 10,
    latest: null,
    evalLoss: null,
    secondsPerIteration: null,
    etaSeconds: null,
    plannedMemoryBytes: null,
  };
  return {
    snapshot: () => Promise.resolve(snap),
    metrics: () => Promise.resolve([]),
    subscribe(l) {
      ls.add(l);
      return () => ls.delete(l);
    },
    emit: (e) => ls.forEach((l) => l(e)),
    get listeners() {
      return ls.size;
    },
  };
}

const line = (iter: number): MetricsLine => ({
  iter,
  fitness_mean: -1,
  fitness_max: 0,
  fitness_min: -2,
  sigma: 0.01,
  alpha: 0.05,
  seconds: 0.1,
  tokens_per_s: 100,
});

Deno.test("a client that never reads is dropped at its queue bound; the emitter never waits", async () => {
  const src = fakeSource();
  const app = createStatusApp({ source: src, readOnly: true, maxQueued: 8, heartbeatMs: 60_000 });
  const stuck = await app.fetch(new Request("http://x/api/events"));
  const reader = (await app.fetch(new Request("http://x/api/events"))).body!.getReader();
  // Let both streams subscribe and settle their start chunk.
  while (src.listeners < 2) await new Promise((r) => setTimeout(r, 0));
  await new Promise((r) => setTimeout(r, 0));
  const dec = new TextDecoder();
  let got = "";
  for (let i = 0; i < 100; i++) {
    src.emit({ type: "iteration", data: line(i) }); // synchronous: returns at once
    // The reading client keeps up; the stuck one never reads.
    while (!got.includes(`id: ${i}\n`)) got += dec.decode((await reader.read()).value);
  }
  assertEquals(src.listeners, 1, "the stuck client is unsubscribed, the reader stays");
  let errored = false;
  try {
    const r = stuck.body!.getReader();
    while (!(await r.read()).done) { /* drain what is left */ }
  } catch {
    errored = true;
  }
  assert(errored, "the stuck client's stream ends in an error");
  await reader.cancel();
  assertEquals(src.listeners, 0);
});

Deno.test("a failed run: state failed with the error, and an end event carrying it", async () => {
  const live = new LiveRun({
    run: "r",
    pipelineFile: "p.yaml",
    pipeline: {},
    adapter: "a",
    total: 5,
  });
  const app = createStatusApp({ source: live, token: TOKEN, readOnly: false, heartbeatMs: 60_000 });
  const events = (await app.fetch(new Request("http://x/api/events"))).body!;
  const reading = readSse(events, (e) => e.some((x) => x.event === "end"));
  while (live.subscribers < 1) await new Promise((r) => setTimeout(r, 0));
  live.iteration(line(0), { total: 5 });
  live.fail(new Error("out of GPU memory\nstack"));
  const { events: got } = await reading;
  assertEquals(got.map((e) => e.event), ["iteration", "end"]);
  assertEquals(JSON.parse(got[1].data), { state: "failed", error: "out of GPU memory" });
  const s = await (await app.fetch(new Request("http://x/api/status"))).json();
  assertEquals([s.state, s.error, s.iteration, s.eta_seconds], [
    "failed",
    "out of GPU memory",
    1,
    null,
  ]);
  const stop = await app.fetch(
    new Request("http://x/api/stop", {
      method: "POST",
      headers: { authorization: `Bearer ${TOKEN}` },
    }),
  );
  assertEquals(stop.status, 409);
});

// ---- headers and the Host check (issue 13, item 8) --------------------------------------------

/** Raw HTTP/1.1 GET with a Host header of the test's choosing (fetch sets its own). */
async function getWithHost(port: number, path: string, host: string) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(
    new TextEncoder().encode(`GET ${path} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`),
  );
  let text = "";
  for await (const c of conn.readable.pipeThrough(new TextDecoderStream())) text += c;
  return { status: Number(text.split(" ")[1]), text };
}

Deno.test("every answer sends CSP (frame-ancestors 'none') and X-Frame-Options as headers", async () => {
  const live = new LiveRun({
    run: "r",
    pipelineFile: "p.yaml",
    pipeline: {},
    adapter: "a",
    total: 5,
  });
  const server = startStatusServer({ source: live, token: TOKEN, readOnly: false, port: 0 });
  try {
    for (const path of ["", "api/status", "api/config", "assets/dashboard.js", "nope"]) {
      const r = await fetch(`${server.url}${path}`);
      await r.body?.cancel();
      const csp = r.headers.get("content-security-policy") ?? "";
      assert(/(^|; )frame-ancestors 'none'(;|$)/.test(csp), `/${path}: CSP ${csp}`);
      assert(/(^|; )default-src 'none'(;|$)/.test(csp) && /script-src 'self'/.test(csp), csp);
      assertEquals(r.headers.get("x-frame-options"), "DENY", `/${path}`);
    }
  } finally {
    await server.close();
  }
});

Deno.test("the Host header must name the server: a DNS-rebinding page cannot read /api/config", async () => {
  const secret = "/home/someone/private/corpus.txt";
  const live = new LiveRun({
    run: "r",
    pipelineFile: "/home/someone/p.yaml",
    pipeline: { dataset: { path: secret } },
    adapter: "a",
    total: 5,
  });
  const server = startStatusServer({ source: live, token: TOKEN, readOnly: false, port: 0 });
  const port = server.port;
  try {
    for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`]) {
      const r = await getWithHost(port, "/api/config", host);
      assertEquals(r.status, 200, host);
      assert(r.text.includes(secret), host);
    }
    for (
      const host of [
        `evil.example:${port}`,
        "evil.example",
        `127.0.0.1.evil.example:${port}`,
        `localhost:${port + 1}`,
        `127.0.0.1`,
        "",
      ]
    ) {
      for (const path of ["/api/config", "/api/status", "/api/events", "/"]) {
        const r = await getWithHost(port, path, host);
        assertEquals(r.status, 421, `Host ${JSON.stringify(host)} ${path}`);
        assert(!r.text.includes(secret), `Host ${host} read the config`);
      }
    }
  } finally {
    await server.close();
  }
});

Deno.test("hostNamesServer: loopback names on loopback, IP literals and this host on 0.0.0.0", () => {
  const lo = { host: "127.0.0.1", port: 8787 };
  assert(hostNamesServer("127.0.0.1:8787", lo) && hostNamesServer("LOCALHOST:8787", lo));
  assert(!hostNamesServer("127.0.0.1:8788", lo) && !hostNamesServer("evil.example:8787", lo));
  assert(!hostNamesServer("127.0.0.1", lo), "no port is port 80");
  const any = { host: "0.0.0.0", port: 80 };
  assert(hostNamesServer("10.1.2.3", any) && hostNamesServer("[fe80::1]", any));
  assert(hostNamesServer(Deno.hostname(), any), "this machine's own name");
  assert(!hostNamesServer("rebind.evil.example", any));
  const named = { host: "gpu-box.lan", port: 9000 };
  assert(hostNamesServer("gpu-box.lan:9000", named) && !hostNamesServer("evil:9000", named));
});
