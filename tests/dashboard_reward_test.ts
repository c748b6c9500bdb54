// The dashboard of a reward run (fitness type reward) in headless Chromium (Debian's chromium,
// npm playwright-core): the reward cards and chart appear and gain points as the run advances
// over the event stream, and the latest evaluation's prompt → completion samples are listed as
// text, each the metrics line's own. The run is configs/pipelines/reward-tiny.yaml on the cpu
// backend, stopped by POST /api/stop. A screenshot is saved as a test artifact (path printed).
import { chromium } from "playwright-core";
import { assert, assertEquals, tempDir } from "./helpers.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const CHROMIUM = Deno.env.get("ESFLOW_CHROMIUM") ?? "/usr/bin/chromium";
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

/** Polls `probe` until `ok` accepts its value; throws naming `what` after `ms`. */
async function until<T>(
  probe: () => Promise<T>,
  ok: (v: T) => boolean,
  o: { ms: number; what: string },
): Promise<T> {
  const end = Date.now() + o.ms;
  let last = await probe();
  while (!ok(last)) {
    if (Date.now() > end) throw new Error(`timed out after ${o.ms} ms: ${o.what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, 150));
    last = await probe();
  }
  return last;
}

Deno.test({
  name: "dashboard: a reward run's reward chart and prompt → completion samples, live",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await Deno.stat(CHROMIUM).catch(() => {
      throw new Error(`no Chromium at ${CHROMIUM}: install it with apt-get install -y chromium`);
    });
    const tmp = await Deno.makeTempDir({ prefix: "esflow-dashboard-reward-" });
    const browserDir = await tempDir("esflow-chromium-");
    const token = crypto.randomUUID().replaceAll("-", "");
    const train = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        `${ROOT}tools/train.ts`,
        `${ROOT}configs/pipelines/reward-tiny.yaml`,
        "--iterations",
        "5000",
        "--status-port",
        "0",
        "--backend",
        "cpu",
        "--out",
        `${tmp}/run`,
        "--quiet",
      ],
      env: { NO_COLOR: "1", ESFLOW_STATUS_TOKEN: token },
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    let context: Awaited<ReturnType<typeof chromium.launchPersistentContext>> | null = null;
    try {
      const stderr: string[] = [];
      let url: string | null = null;
      const drained = (async () => {
        for await (const chunk of train.stderr.pipeThrough(new TextDecoderStream())) {
          stderr.push(chunk);
          url ??= /status (http:\/\/127\.0\.0\.1:\d+\/)/.exec(stderr.join(""))?.[1] ?? null;
        }
      })();
      await until(() => Promise.resolve(url), (u) => u !== null, {
        ms: 60_000,
        what: "train printing its status URL",
      });
      context = await chromium.launchPersistentContext(browserDir, {
        executablePath: CHROMIUM,
        headless: true,
        args: CHROMIUM_ARGS,
        viewport: { width: 1280, height: 1400 },
      });
      const problems: string[] = [];
      const page = await context.newPage();
      page.on("console", (m) => m.type() === "error" && problems.push(`console: ${m.text()}`));
      page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
      await page.goto(url!);
      await page.waitForSelector("body[data-ready='true']", { timeout: 30_000 });
      const points = () => page.getAttribute("#reward-chart", "data-points").then(Number);
      const first = await until(points, (n) => n >= 2, {
        ms: 60_000,
        what: "the reward chart drawing lines",
      });
      await until(points, (n) => n >= first + 12, {
        ms: 90_000,
        what: `the reward chart growing past ${first} lines (an evaluation every 10)`,
      });
      assert(await page.isVisible("#reward-section"), "the reward section is shown");
      assert(await page.isVisible("#eval-reward-card"), "the held-out reward card is shown");
      const reward = Number(await page.textContent("#reward"));
      assert(reward >= 0 && reward <= 1, `reward card shows ${reward}`);
      // Held-out rewards as points (one per evaluation so far), the mean as a line.
      const dots = await page.locator("#reward-chart .mark-symbol.role-mark path").count();
      assert(dots >= 2, `${dots} held-out reward points`);

      const res = await fetch(`${url}api/stop`, {
        method: "POST",
        headers: { Authorization: `Bearer ${token}` },
      });
      await res.body?.cancel();
      assertEquals(res.status, 202);
      await page.waitForSelector("#state[data-state='stopped']", { timeout: 60_000 });
      assertEquals((await train.status).code, 0, stderr.join(""));
      await drained;

      // The samples listed are the latest evaluation's, as the metrics line has them.
      const written = (await Deno.readTextFile(`${tmp}/run/metrics.jsonl`)).trim().split("\n")
        .map((l) => JSON.parse(l));
      const latest = written.filter((l) => Array.isArray(l.samples)).at(-1);
      assertEquals(await page.textContent("#samples-iter"), String(latest.iter));
      const items = await page.locator("#samples li").allTextContents();
      assertEquals(
        items,
        latest.samples.map((s: { prompt: string; completion: string; reward: number }) =>
          `${s.prompt} → ${s.completion}(${s.reward.toFixed(3)})`
        ),
      );
      assertEquals(await points(), written.length, "every line reached the reward chart");
      const shot = `${tmp}/dashboard-reward.png`;
      await page.screenshot({ path: shot, fullPage: true });
      console.log(`dashboard screenshot: ${shot}`);
      assert(problems.length === 0, `page problems:\n${problems.join("\n")}`);
    } finally {
      await context?.close();
      try {
        train.kill("SIGKILL");
      } catch { /* exited */ }
      await train.status;
      await Deno.remove(browserDir, { recursive: true }).catch(() => {});
      await Deno.remove(`${tmp}/run`, { recursive: true }).catch(() => {});
    }
  },
});
