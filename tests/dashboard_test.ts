// The dashboard in a real headless Chromium (Debian's /usr/bin/chromium driven by npm
// playwright-core) against a live training run's status server: the page names the run, its
// charts gain points as the run advances, it ends in the state the run ends in, and it makes
// no request outside 127.0.0.1. Then the same run dir through `deno task serve` (read-only):
// the whole history, no event stream. Screenshots are saved as test artifacts (paths printed).
import { chromium } from "playwright-core";
import { assert, assertEquals, tempDir } from "./helpers.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const CHROMIUM = Deno.env.get("ESFLOW_CHROMIUM") ?? "/usr/bin/chromium";

/**
 * Flags for a root, sandboxless, offline machine. The background-networking ones keep Chromium
 * from calling Google's hosts at start (refused here, and noise in the request log).
 */
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/**
 * Starts a command and waits for the status URL it prints on `from` ("status http://…/").
 * The rest of that stream is collected into the returned `output`.
 */
async function startWithUrl(
  args: string[],
  o: { from: "stdout" | "stderr"; env?: Record<string, string> },
): Promise<{ child: Deno.ChildProcess; url: string; output: string[]; drained: Promise<void> }> {
  const child = new Deno.Command(Deno.execPath(), {
    args,
    env: { NO_COLOR: "1", ...o.env },
    stdin: "null",
    stdout: o.from === "stdout" ? "piped" : "null",
    stderr: o.from === "stderr" ? "piped" : "null",
  }).spawn();
  const output: string[] = [];
  let url: string | null = null;
  const drained = (async () => {
    for await (const line of lines(o.from === "stdout" ? child.stdout : child.stderr)) {
      output.push(line);
      const m = /status (http:\/\/127\.0\.0\.1:\d+\/)/.exec(line);
      if (m && url === null) url = m[1];
    }
  })();
  try {
    await until(() => Promise.resolve(url), (u) => u !== null, {
      ms: 60_000,
      what: `${args[2]} printing its status URL`,
    });
  } catch (e) {
    child.kill("SIGKILL");
    throw new Error(`${(e as Error).message}\noutput:\n${output.join("\n")}`);
  }
  return { child, url: url!, output, drained };
}

/** Lines of a byte stream, as they come. */
async function* lines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  while (true) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      yield buf.slice(0, nl);
      buf = buf.slice(nl + 1);
    }
  }
  if (buf) yield buf;
}

/** Polls `probe` until it returns a value `ok` accepts; throws `what` after `ms`. */
async function until<T>(
  probe: () => Promise<T>,
  ok: (v: T) => boolean,
  o: { ms: number; what: string },
): Promise<T> {
  const end = Date.now() + o.ms;
  let last: T = await probe();
  while (!ok(last)) {
    if (Date.now() > end) throw new Error(`timed out after ${o.ms} ms: ${o.what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, 150));
    last = await probe();
  }
  return last;
}

Deno.test({
  name: "dashboard: live run and read-only serve in headless Chromium, no outside requests",
  // playwright-core keeps its own pipes and timers to the browser process.
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    try {
      await Deno.stat(CHROMIUM);
    } catch {
      throw new Error(
        `no Chromium at ${CHROMIUM}: the dashboard test drives Debian's browser; ` +
          "install it with `apt-get install -y chromium` (CI's .ci/run does)",
      );
    }
    const tmp = await Deno.makeTempDir({ prefix: "esflow-dashboard-" });
    const token = crypto.randomUUID().replaceAll("-", "");
    const browserDir = await tempDir("esflow-chromium-");
    let context: Awaited<ReturnType<typeof chromium.launchPersistentContext>> | null = null;
    const children: Deno.ChildProcess[] = [];
    try {
      // Far more iterations than the test watches: it stops the run itself (POST /api/stop),
      // so the run is still live whenever the page looks, however slow the machine. train
      // prints "esflow train: status http://127.0.0.1:PORT/ (stop: …)" on stderr at start.
      const train = await startWithUrl([
        "run",
        "-A",
        `${ROOT}tools/train.ts`,
        `${ROOT}configs/pipelines/micro-smoke.yaml`,
        "--iterations",
        "5000",
        "--status-port",
        "0",
        "--out",
        `${tmp}/run`,
        "--quiet",
      ], { from: "stderr", env: { ESFLOW_STATUS_TOKEN: token } });
      children.push(train.child);
      const baseUrl = train.url;

      context = await chromium.launchPersistentContext(browserDir, {
        executablePath: CHROMIUM,
        headless: true,
        args: CHROMIUM_ARGS,
        viewport: { width: 1280, height: 1100 },
      });
      const requests: string[] = [];
      const problems: string[] = [];
      /** A page that records every request it makes and every error it logs. */
      const watchedPage = async () => {
        const page = await context!.newPage();
        page.on("request", (r) => requests.push(r.url()));
        page.on("console", (m) => {
          if (m.type() === "error") problems.push(`console: ${m.text()}`);
        });
        page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
        return page;
      };

      // ---- live ----
      const page = await watchedPage();
      await page.goto(baseUrl);
      await page.waitForSelector("body[data-ready='true']", { timeout: 30_000 });
      const name = await page.textContent("#run-name");
      assertEquals(name, "micro-smoke", "run name");
      assertEquals(await page.textContent("#state"), "running", "state");

      // micro-smoke evaluates the held-out loss every iteration: one symbol per line.
      const points = (p = page) => p.locator("#loss-chart .mark-symbol.role-mark path").count();
      const first = await until(() => points(), (n) => n >= 2, {
        ms: 30_000,
        what: "the loss chart drawing points",
      });
      const later = await until(() => points(), (n) => n >= first + 3, {
        ms: 60_000,
        what: `the loss chart growing past ${first} points as the run advances`,
      });
      console.log(`loss chart points: ${first}, later ${later}`);
      const fitnessPoints = Number(await page.getAttribute("#fitness-chart", "data-points"));
      assert(fitnessPoints >= later, `fitness chart holds ${fitnessPoints} lines, < ${later}`);
      assert((await page.textContent("#adapter"))!.length > 1, "adapter shown");
      assert((await page.textContent("#config"))!.includes('"population": 4'), "config shown");
      // The step's diagnostics from tell: numbers for the spread, the expected ‖Δθ‖ and its
      // ratio to ‖θ‖, and no pair SNR (micro-smoke has no antithetic pairs).
      for (const id of ["#fitness-std", "#update-norm"]) {
        const shown = Number(await page.textContent(id));
        assert(Number.isFinite(shown) && shown > 0, `${id} shows ${shown}`);
      }
      assert((await page.textContent("#fitness-spread"))!.startsWith("max − min "), "spread");
      const ratio = /^\/ ‖θ‖ = (\S+)$/.exec((await page.textContent("#update-ratio"))!);
      assert(ratio && Number(ratio[1]) > 0 && Number(ratio[1]) < 1, `ratio shown: ${ratio}`);
      assertEquals(await page.textContent("#pair-snr"), "–", "no pairs, no SNR");
      const shot = `${tmp}/dashboard.png`;
      await page.screenshot({ path: shot, fullPage: true });
      console.log(`dashboard screenshot: ${shot}`);

      // Stop the run the way a user would: the page follows it to the end over the stream.
      const res = await fetch(`${baseUrl}api/stop`, {
        method: "POST",
        headers: { Authorization: `Bearer ${token}` },
      });
      await res.body?.cancel();
      assertEquals(res.status, 202, "POST /api/stop");
      await page.waitForSelector("#state[data-state='stopped']", { timeout: 60_000 });
      assertEquals(await page.textContent("#connection"), "run stopped", "connection label");
      const { code } = await train.child.status;
      await train.drained;
      assertEquals(code, 0, `train exit code; stderr:\n${train.output.join("\n")}`);
      // Every line the run wrote reached the page before `end`.
      const written = (await Deno.readTextFile(`${tmp}/run/metrics.jsonl`)).trim().split("\n");
      assertEquals(await points(), written.length, "loss chart points = metrics lines at the end");
      await page.close();

      // ---- read-only: the same run dir through `deno task serve` ----
      const serve = await startWithUrl(
        ["run", "-A", `${ROOT}tools/serve.ts`, `${tmp}/run`, "--port", "0"],
        { from: "stdout" },
      );
      children.push(serve.child);
      const eventsBefore = requests.filter((u) => u.includes("/api/events")).length;
      const still = await watchedPage();
      await still.goto(serve.url);
      await still.waitForSelector("body[data-ready='true']", { timeout: 30_000 });
      assertEquals(await still.textContent("#run-name"), "micro-smoke", "served run name");
      assertEquals(await still.textContent("#state"), "stopped", "served state");
      assertEquals(await still.textContent("#connection"), "read-only", "served connection label");
      assertEquals(
        await still.textContent("#checkpoint"),
        `iteration ${written.length}`,
        "served last checkpoint (the stop's)",
      );
      assertEquals(await points(still), written.length, "served loss chart points");
      const lastLine = JSON.parse(written.at(-1)!);
      assertEquals(
        Number(await still.textContent("#update-norm")),
        Number(lastLine.update_norm_expected.toPrecision(3)),
        "served expected ‖Δθ‖ of the last line",
      );
      assertEquals(
        await still.textContent("#update-ratio"),
        `/ ‖θ‖ = ${lastLine.update_ratio_expected.toPrecision(3)}`,
        "served ‖Δθ‖/‖θ‖ of the last line",
      );
      assertEquals(
        Number(await still.getAttribute("#fitness-chart", "data-points")),
        written.length,
        "served fitness chart lines",
      );
      assertEquals(
        requests.filter((u) => u.includes("/api/events")).length,
        eventsBefore,
        "a read-only page opens no event stream",
      );
      const readOnlyShot = `${tmp}/dashboard-read-only.png`;
      await still.screenshot({ path: readOnlyShot, fullPage: true });
      console.log(`dashboard screenshot (read-only): ${readOnlyShot}`);

      const outside = requests.filter((u) => {
        const p = new URL(u);
        return !(p.protocol === "data:" || p.hostname === "127.0.0.1");
      });
      assert(outside.length === 0, `requests outside 127.0.0.1: ${outside.join(", ")}`);
      assert(requests.some((u) => u.endsWith("/assets/vega.min.js")), "vega served locally");
      assert(problems.length === 0, `page problems:\n${problems.join("\n")}`);
    } finally {
      await context?.close();
      for (const child of children) {
        try {
          child.kill("SIGKILL");
        } catch { /* already exited */ }
        await child.status;
      }
      await Deno.remove(browserDir, { recursive: true }).catch(() => {});
      // The screenshots stay; the run's checkpoints are not artifacts.
      await Deno.remove(`${tmp}/run`, { recursive: true }).catch(() => {});
    }
  },
});
