/**
 * What `deno task train` shows while it works: a stage line from the first second ("loading the
 * pipeline…", "iteration 0: compiling kernels · member 7/16"), then per iteration the fitness,
 * the held-out loss labelled with the iteration it was measured at, throughput and an ETA.
 *
 * On a terminal it is one line redrawn in place, with a spinner; anywhere else (a pipe, a log
 * file, CI) it is plain lines, one per stage and one per iteration, nothing redrawn.
 *
 * The ETA counts only iterations this process completed after its first: the first compiles
 * every kernel (seconds warm, a minute on a cold shader cache), so it says nothing about the
 * rest. Before a second iteration ends there is no ETA ("ETA …").
 *
 * The formatters are pure functions (tests/progress_test.ts); {@link TrainProgress} only
 * decides when to draw.
 *
 * @module
 */
import type { MetricsLine } from "../pipeline/run_dir.ts";

/** Braille spinner frames, as most terminal tools draw them. */
export const SPINNER = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"] as const;

/** Seconds in words: "0.9s", "42s", "3m05s", "2h07m"; "?" when not finite. */
export function formatDuration(s: number): string {
  if (!Number.isFinite(s) || s < 0) return "?";
  if (s < 10) return `${s.toFixed(1)}s`;
  if (s < 60) return `${Math.round(s)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(Math.floor(s % 60)).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}

/**
 * Times iteration ends and estimates the rest from those after this process's first iteration.
 * `now` is injectable for tests.
 */
export class EtaClock {
  #ends: number[] = [];
  #now: () => number;

  constructor(now: () => number = () => performance.now() / 1000) {
    this.#now = now;
  }

  /** Notes that an iteration ended now. */
  tick(): void {
    this.#ends.push(this.#now());
  }

  /** Seconds per iteration over the iterations after the first; undefined before a second. */
  get secondsPerIteration(): number | undefined {
    const n = this.#ends.length - 1;
    return n >= 1 ? (this.#ends[n] - this.#ends[0]) / n : undefined;
  }

  /** Seconds left for `remaining` iterations; undefined before a second iteration ended. */
  eta(remaining: number): number | undefined {
    const spi = this.secondsPerIteration;
    return spi === undefined ? undefined : spi * remaining;
  }
}

/** What an iteration line shows. */
export interface IterationView {
  /** The metrics line of the iteration that ended. */
  line: MetricsLine;
  /** Iterations the run is asked for. */
  total: number;
  /** The latest held-out loss and the iteration it was measured at. */
  evalLoss?: { iter: number; value: number };
  /** Seconds left, when known. */
  eta?: number;
}

/** The held-out loss with the iteration it belongs to: "held-out 5.5121 (iter 10)". */
export function formatEval(e: { iter: number; value: number } | undefined): string {
  return e ? `held-out ${e.value.toFixed(4)} (iter ${e.iter})` : "held-out –";
}

/** One iteration as a plain line (no terminal). */
export function formatIterationLine(v: IterationView): string {
  const l = v.line;
  return `iter ${l.iter + 1}/${v.total} fitness ${l.fitness_mean.toFixed(4)} ` +
    `(max ${l.fitness_max.toFixed(4)}) ${formatEval(v.evalLoss)} ` +
    `${Math.round(l.tokens_per_s)} tok/s ${l.seconds.toFixed(2)}s ` +
    `ETA ${v.eta === undefined ? "…" : formatDuration(v.eta)}`;
}

/** A bar of `width` cells, `done` of `total` filled. */
export function formatBar(done: number, total: number, width: number): string {
  const f = total > 0 ? Math.min(1, Math.max(0, done / total)) : 0;
  const full = Math.floor(f * width);
  return "█".repeat(full) + "░".repeat(width - full);
}

/**
 * The terminal line once an iteration has ended: spinner, iterations done with a bar, ETA,
 * fitness, the held-out loss with its iteration, the member being scored now (`member`) and
 * throughput. What does not fit in `columns` is left out, least important first (throughput,
 * then the member, the held-out loss, the fitness); the bar shrinks before anything goes.
 */
export function formatIterationStatus(
  v: IterationView,
  frame: number,
  columns = 100,
  member?: string,
): string {
  const l = v.line, done = l.iter + 1;
  // By importance: what is kept first.
  const parts = [
    `ETA ${v.eta === undefined ? "…" : formatDuration(v.eta)}`,
    `fitness ${l.fitness_mean.toFixed(4)}`,
    formatEval(v.evalLoss),
    ...(member ? [member] : []),
    `${Math.round(l.tokens_per_s)} tok/s`,
  ];
  const head = `${SPINNER[frame % SPINNER.length]} iter ${done}/${v.total}`;
  // A bar of fixed width, so the line does not jump as its text changes; gone on a narrow one.
  const width = columns >= 130 ? 20 : columns >= 90 ? 10 : 0;
  const bar = width > 0 ? ` ${formatBar(done, v.total, width)}` : "";
  const pct = width >= 20 ? ` ${Math.floor((100 * done) / v.total)}%` : "";
  for (let n = parts.length; n > 1; n--) {
    const line = `${head}${bar}${pct} │ ${parts.slice(0, n).join(" │ ")}`;
    if ([...line].length <= columns) return line;
  }
  return fit(`${head}${bar}${pct} │ ${parts[0]}`, columns);
}

/**
 * What is running inside an iteration, from `done` members scored of `of`: "iteration 0:
 * compiling kernels · member 7/16" (the 7th is being scored).
 */
export function formatMembers(
  o: { iteration: number; done: number; of: number; compiling?: boolean },
): string {
  const now = o.done === o.of ? `${o.of} members scored, updating` : `member ${o.done + 1}/${o.of}`;
  return `iteration ${o.iteration}: ${o.compiling ? "compiling kernels · " : ""}${now}`;
}

/** A stage on the terminal: spinner and text, cut to the terminal's width. */
export function formatStage(text: string, frame: number, columns = 100): string {
  return fit(`${SPINNER[frame % SPINNER.length]} ${text}`, columns);
}

/** Cuts `s` to `columns` characters (code points), with an ellipsis when cut. */
function fit(s: string, columns: number): string {
  const chars = [...s];
  return chars.length <= columns ? s : chars.slice(0, Math.max(1, columns - 1)).join("") + "…";
}

/** Where {@link TrainProgress} writes, and how it knows the terminal. */
export interface ProgressSink {
  /** Whether the output is a terminal (redraw one line) or not (plain lines). */
  tty: boolean;
  /** Writes text as it is (no newline added). */
  write(text: string): void;
  /** Terminal width; default 100. */
  columns?(): number;
}

/** The sink of the process: stdout, a terminal or not. */
export function stdoutSink(): ProgressSink {
  const enc = new TextEncoder();
  return {
    tty: Deno.stdout.isTerminal(),
    write: (t) => {
      const bytes = enc.encode(t);
      let done = 0;
      while (done < bytes.length) done += Deno.stdout.writeSync(bytes.subarray(done));
    },
    columns: () => {
      try {
        // A pseudo-terminal without a size (script, some CI runners) says 0.
        return Deno.consoleSize().columns || 100;
      } catch {
        return 100;
      }
    },
  };
}

/** Clears the terminal line the cursor is on. */
const CLEAR = "\r\x1b[2K";

/**
 * train's progress. On a terminal one status line, redrawn on every event and by a timer while
 * the main thread is free (between iterations, WebGPU waits; the CPU backend's native calls
 * block it, so there the spinner moves member by member); {@link log} prints a line above it.
 * Elsewhere each stage and each iteration is one line.
 */
export class TrainProgress {
  readonly eta: EtaClock;
  #sink: ProgressSink;
  #frame = 0;
  #status = "";
  #timer: ReturnType<typeof setInterval> | undefined;
  #lastStage = "";
  #evalLoss: { iter: number; value: number } | undefined;
  #lastEvent = 0;

  constructor(sink: ProgressSink, o: { now?: () => number } = {}) {
    this.#sink = sink;
    this.eta = new EtaClock(o.now);
    if (sink.tty) {
      const timer = setInterval(() => this.#draw(), 120);
      Deno.unrefTimer(timer);
      this.#timer = timer;
      sink.write("\x1b[?25l"); // hide the cursor while the line is redrawn
    }
  }

  get #columns(): number {
    return this.#sink.columns?.() ?? 100;
  }

  /**
   * A stage before or between iterations ("loading the pipeline…"): the terminal's status line.
   * Elsewhere only a stage marked `log` (one that takes long: the first iteration's compiles)
   * is a line of its own; the rest would only pad a log file.
   */
  stage(text: string, o: { log?: boolean } = {}): void {
    if (this.#sink.tty) {
      this.#status = text;
      this.#draw(true);
    } else if (o.log && text !== this.#lastStage) {
      this.#sink.write(`${text}\n`);
    }
    this.#lastStage = text;
  }

  /** Members scored within an iteration; on a terminal only (a log gets one line per iteration). */
  members(o: { iteration: number; done: number; of: number; compiling?: boolean }): void {
    if (!this.#sink.tty) return;
    this.#status = formatMembers(o);
    this.#member = o.done === o.of ? "updating" : `member ${o.done + 1}/${o.of}`;
    this.#draw(true);
  }
  #member: string | undefined;

  /** An iteration ended with `line`. */
  iteration(line: MetricsLine, total: number): void {
    this.eta.tick();
    if (line.eval_loss !== undefined) this.#evalLoss = { iter: line.iter, value: line.eval_loss };
    const view: IterationView = {
      line,
      total,
      evalLoss: this.#evalLoss,
      eta: this.eta.eta(total - line.iter - 1),
    };
    if (this.#sink.tty) {
      this.#status = "";
      this.#member = undefined;
      this.#iterationView = view;
      this.#draw(true);
    } else {
      this.#sink.write(`${formatIterationLine(view)}\n`);
    }
  }
  #iterationView: IterationView | undefined;

  /** The latest held-out loss and its iteration. */
  get evalLoss(): { iter: number; value: number } | undefined {
    return this.#evalLoss;
  }

  /** A line that stays (a note, the status URL, a checkpoint): printed above the status line. */
  log(text: string, o: { stderr?: boolean } = {}): void {
    const live = this.#sink.tty && !this.#ended;
    if (live) this.#sink.write(CLEAR);
    if (o.stderr) console.error(text);
    else this.#sink.write(`${text}\n`);
    if (live) this.#draw(true);
  }

  /** Clears the status line and stops the timer; later output starts on a clean line. */
  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    if (this.#sink.tty) this.#sink.write(`${CLEAR}\x1b[?25h`);
  }
  #ended = false;

  #draw(event = false): void {
    if (!this.#sink.tty || this.#ended) return;
    const now = performance.now();
    // An event draws at once; the timer only moves the spinner when nothing else has lately.
    if (!event && now - this.#lastEvent < 100) return;
    if (event) this.#lastEvent = now;
    this.#frame++;
    const cols = this.#columns;
    const line = this.#iterationView
      ? formatIterationStatus(this.#iterationView, this.#frame, cols, this.#member)
      : formatStage(this.#status || this.#lastStage, this.#frame, cols);
    this.#sink.write(CLEAR + line);
  }
}
