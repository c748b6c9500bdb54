// What train shows while it works (issue 14, item 1): a stage line from the start, member by
// member inside an iteration on a terminal, an ETA from the iterations after the first (which
// compiles every kernel), the held-out loss labelled with the iteration it was measured at; and
// plain lines, nothing redrawn, when the output is not a terminal.
import { assert, assertEquals, withTempDir } from "./helpers.ts";
import {
  EtaClock,
  formatDuration,
  formatEval,
  formatIterationLine,
  formatIterationStatus,
  formatMembers,
  type ProgressSink,
  TrainProgress,
} from "../tools/progress.ts";
import type { MetricsLine } from "../pipeline/run_dir.ts";
import { ROOT, writeSmoke } from "./reliability_helpers.ts";

/** A carriage return or an escape: what a redrawn terminal line is made of. */
const CONTROL = new RegExp("[\r\u001b]");
/** Where one terminal frame ends: a redraw (CR, clear line) or a newline. */
const REDRAW = new RegExp("\r\u001b\\[2K|\r?\n");

const line = (iter: number, o: Partial<MetricsLine> = {}): MetricsLine => ({
  iter,
  fitness_mean: -5.54,
  fitness_max: -5.49,
  fitness_min: -5.6,
  sigma: 0.01,
  alpha: 0.05,
  seconds: 1,
  tokens_per_s: 16000,
  ...o,
});

Deno.test("progress: the ETA leaves out the first iteration (the one that compiles)", () => {
  let now = 0;
  const clock = new EtaClock(() => now);
  // Iteration 0 took 20 s (compiling), then 1 s each.
  now = 20;
  clock.tick();
  assertEquals(clock.eta(11), undefined, "no ETA from the first iteration alone");
  now = 21;
  clock.tick();
  now = 22;
  clock.tick();
  assertEquals(clock.secondsPerIteration, 1);
  // 9 left at 1 s each: 9 s (an average over all three would say 66 s).
  assertEquals(clock.eta(9), 9);
});

Deno.test("progress: durations, the held-out loss with its iteration, the plain line", () => {
  assertEquals(formatDuration(0.94), "0.9s");
  assertEquals(formatDuration(42.4), "42s");
  assertEquals(formatDuration(185), "3m05s");
  assertEquals(formatDuration(2 * 3600 + 7 * 60 + 9), "2h07m");
  assertEquals(formatDuration(NaN), "?");
  assertEquals(formatEval(undefined), "held-out –");
  assertEquals(formatEval({ iter: 10, value: 5.51234 }), "held-out 5.5123 (iter 10)");
  const l = formatIterationLine({
    line: line(12),
    total: 100,
    evalLoss: { iter: 10, value: 5.5 },
    eta: 80,
  });
  assertEquals(
    l,
    "iter 13/100 fitness -5.5400 (max -5.4900) held-out 5.5000 (iter 10) 16000 tok/s 1.00s ETA 1m20s",
  );
  assert(
    formatIterationLine({ line: line(0), total: 5 }).endsWith("ETA …"),
    "no ETA yet after the first",
  );
  assertEquals(
    formatMembers({ iteration: 0, done: 6, of: 16, compiling: true }),
    "iteration 0: compiling kernels · member 7/16",
  );
  assertEquals(
    formatMembers({ iteration: 3, done: 16, of: 16 }),
    "iteration 3: 16 members scored, updating",
  );
});

Deno.test("progress: the terminal line fits its width, dropping the least important first", () => {
  const v = { line: line(49), total: 100, evalLoss: { iter: 40, value: 4.6 }, eta: 75 };
  for (const columns of [40, 60, 80, 100, 140]) {
    const s = formatIterationStatus(v, 0, columns, "member 7/16");
    assert([...s].length <= columns, `${columns} columns: ${s}`);
    assert(s.includes("iter 50/100"), s);
    assert(s.includes("ETA 1m15s") || columns < 60, s);
  }
  const wide = formatIterationStatus(v, 0, 140, "member 7/16");
  for (
    const part of [
      "50%",
      "fitness -5.5400",
      "held-out 4.6000 (iter 40)",
      "member 7/16",
      "16000 tok/s",
    ]
  ) {
    assert(wide.includes(part), `${part} in ${wide}`);
  }
  // Narrower: throughput goes before the member, the member before the held-out loss.
  const mid = formatIterationStatus(v, 0, 100, "member 7/16");
  assert(!mid.includes("tok/s") && mid.includes("member 7/16"), mid);
});

/** A sink that keeps what was written. */
function sink(tty: boolean): ProgressSink & { text: string } {
  const s = { tty, text: "", write: (t: string) => void (s.text += t), columns: () => 100 };
  return s;
}

Deno.test("progress: not a terminal — plain lines only, one per iteration", () => {
  const out = sink(false);
  const p = new TrainProgress(out);
  p.stage("loading the pipeline…");
  p.stage("iteration 0: compiling kernels…", { log: true });
  p.members({ iteration: 0, done: 3, of: 16 });
  p.iteration(line(0, { eval_loss: 5.51 }), 3);
  p.log("checkpoint runs/x/final");
  p.iteration(line(1), 3);
  p.end();
  assert(!CONTROL.test(out.text), `no control characters: ${JSON.stringify(out.text)}`);
  const lines = out.text.trimEnd().split("\n");
  assertEquals(lines.length, 4, out.text);
  assertEquals(lines[0], "iteration 0: compiling kernels…");
  assert(
    lines[1].startsWith("iter 1/3 ") && lines[1].includes("held-out 5.5100 (iter 0)"),
    lines[1],
  );
  assertEquals(lines[2], "checkpoint runs/x/final");
  // Iteration 1 shows iteration 0's held-out loss, labelled as iteration 0's.
  assert(
    lines[3].startsWith("iter 2/3 ") && lines[3].includes("held-out 5.5100 (iter 0)"),
    lines[3],
  );
});

Deno.test("progress: a terminal — one line redrawn in place, logs above it", () => {
  const out = sink(true);
  const p = new TrainProgress(out);
  p.stage("loading the pipeline…");
  assert(out.text.includes("\r\x1b[2K⠙ loading the pipeline…"), JSON.stringify(out.text));
  p.members({ iteration: 0, done: 6, of: 16, compiling: true });
  assert(
    out.text.endsWith("iteration 0: compiling kernels · member 7/16"),
    JSON.stringify(out.text),
  );
  p.log("checkpoint d");
  assert(out.text.includes("\r\x1b[2Kcheckpoint d\n"), "a log clears the status line first");
  p.iteration(line(0, { eval_loss: 5.5 }), 10);
  assert(/iter 1\/10 .*ETA …/.test(out.text.slice(out.text.lastIndexOf("\r"))), out.text);
  p.end();
  assert(out.text.endsWith("\r\x1b[2K\x1b[?25h"), "end clears the line and shows the cursor");
  const before = out.text.length;
  p.log("done");
  assertEquals(out.text.slice(before), "done\n", "after end, plain lines");
});

/** `deno run -A tools/train.ts args…` under a pseudo-terminal (util-linux script). */
async function underTerminal(args: string[]): Promise<{ code: number; text: string }> {
  const cmd = [Deno.execPath(), "run", "-A", "tools/train.ts", ...args]
    .map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(" ");
  const out = await new Deno.Command("script", {
    args: ["-q", "-e", "-c", cmd, "/dev/null"],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp" },
  }).output();
  return { code: out.code, text: new TextDecoder().decode(out.stdout) };
}

Deno.test("progress: train on a terminal shows stages, members and labelled held-out loss", async () => {
  await withTempDir(async (dir) => {
    const file = await writeSmoke(dir, { checkpointEvery: 0 });
    const r = await underTerminal([
      file,
      "--iterations",
      "3",
      "--out",
      `${dir}/run`,
      "--backend",
      "cpu",
      "--no-status",
    ]);
    assertEquals(r.code, 0, r.text);
    // What the screen showed, one redraw per entry.
    const frames = r.text.split(REDRAW).map((s) => s.trim()).filter((s) => s);
    assert(
      frames.some((f) => f.endsWith("loading the pipeline: corpus, tokenizer, model…")),
      r.text,
    );
    assert(frames.some((f) => /iteration 0: member 1\/4$/.test(f)), `member by member:\n${r.text}`);
    assert(frames.some((f) => /iter 1\/3 .*ETA …/.test(f)), r.text);
    assert(
      frames.some((f) => /iter 2\/3 .*ETA \d/.test(f)),
      `an ETA once a second iteration ended:\n${r.text}`,
    );
    assert(frames.some((f) => f.includes("held-out") && f.includes("(iter 0)")), r.text);
    assert(/done: 3 iterations in .*held-out \d\.\d{4} \(iter 2\)/.test(r.text), r.text);
  });
});

Deno.test("progress: train into a pipe writes plain lines", async () => {
  await withTempDir(async (dir) => {
    const file = await writeSmoke(dir, { checkpointEvery: 0 });
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "tools/train.ts",
        file,
        "--iterations",
        "3",
        "--out",
        `${dir}/run`,
        "--backend",
        "cpu",
        "--no-status",
      ],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
    assert(!CONTROL.test(text), `no control characters: ${JSON.stringify(text)}`);
    const iters = text.split("\n").filter((l) => l.startsWith("iter "));
    assertEquals(iters.length, 3, text);
    assert(iters[0].endsWith("ETA …") && /ETA \d/.test(iters[1]), text);
    assert(iters.every((l) => /held-out \d\.\d{4} \(iter \d\)/.test(l)), text);
  });
});
