/**
 * `deno task plot`: held-out loss and mean fitness against iteration, one line per run (for a
 * reward run, the population's mean reward and θ's held-out reward: {@link rewardPlotSpec}).
 *
 *   deno task plot RUN_DIR [RUN_DIR…] [--out FILE.svg|FILE.png]
 *
 * A vega-lite spec is rendered to SVG by vega's headless View (no browser, no canvas), and the
 * SVG to PNG by resvg. The default output is RUN_DIR/plot.svg for one run and ./plot.svg for
 * several. Bad input (a missing run dir, no metrics.jsonl, an unknown extension) prints one line
 * and exits with code 2, before anything is written.
 *
 * The same spec shape draws the paper's loss curve (Figure 1) for one run and its ablations over
 * population size and samples per iteration (Figures 4 and 5) for a sweep (tools/sweep.ts).
 *
 * @module
 */
import * as vega from "vega";
import * as vegaLite from "vega-lite";
import { Resvg } from "@resvg/resvg-js";
import { basename, dirname, extname, join, relative, resolve } from "node:path";
import { parseFlags, runMain } from "./cli.ts";
import { UserError } from "../errors.ts";
import type { MetricsLine } from "../pipeline/run.ts";

const USAGE = "deno task plot RUN_DIR [RUN_DIR…] [--out FILE.svg|FILE.png]";

/** One run's metrics, ready to plot. */
export interface PlottedRun {
  /** The run dir as given. */
  dir: string;
  /** The pipeline's name from the run's state.json, when a checkpoint has one. */
  name?: string;
  /** Legend label: the run name, or the dir when names would collide or are unknown. */
  label: string;
  lines: MetricsLine[];
}

/** Reads the pipeline name from the newest state.json the run has written, if any. */
async function runName(dir: string): Promise<string | undefined> {
  const candidates = [join(dir, "final", "state.json")];
  try {
    const iters: number[] = [];
    for await (const e of Deno.readDir(join(dir, "checkpoints"))) {
      const m = /^iter-(\d+)$/.exec(e.name);
      if (e.isDirectory && m) iters.push(Number(m[1]));
    }
    iters.sort((a, b) => b - a);
    candidates.push(...iters.map((i) => join(dir, "checkpoints", `iter-${i}`, "state.json")));
  } catch { /* a run that crashed before its first checkpoint */ }
  for (const path of candidates) {
    try {
      const state = JSON.parse(await Deno.readTextFile(path));
      const name = state?.pipeline?.name;
      if (typeof name === "string" && name !== "") return name;
    } catch { /* not written (yet) */ }
  }
  return undefined;
}

/**
 * Reads a run dir's metrics.jsonl. A missing dir or file, or a file with no usable line, is a
 * {@link UserError}. A torn last line (a run killed mid-write) is skipped, not an error.
 */
export async function readRun(dir: string): Promise<Omit<PlottedRun, "label">> {
  try {
    if (!(await Deno.stat(dir)).isDirectory) {
      throw new UserError(`${dir}: not a directory; give a run dir (it holds metrics.jsonl)`);
    }
  } catch (e) {
    if (e instanceof UserError) throw e;
    throw new UserError(`${dir}: no such run dir; give a run dir such as runs/tiny-austen`);
  }
  let text: string;
  try {
    text = await Deno.readTextFile(join(dir, "metrics.jsonl"));
  } catch {
    throw new UserError(
      `${dir}: no metrics.jsonl; give the dir a training run wrote (deno task train --out DIR)`,
    );
  }
  const lines: MetricsLine[] = [];
  for (const raw of text.split("\n")) {
    if (raw.trim() === "") continue;
    try {
      const line = JSON.parse(raw);
      if (typeof line?.iter === "number" && typeof line?.fitness_mean === "number") {
        lines.push(line);
      }
    } catch { /* torn line */ }
  }
  if (lines.length === 0) {
    throw new UserError(`${dir}/metrics.jsonl: no metrics lines yet; train at least one iteration`);
  }
  return { dir, name: await runName(dir), lines };
}

/** Labels runs by name; where two runs share a name (a sweep), by their dirs instead. */
export function labelRuns(runs: Omit<PlottedRun, "label">[]): PlottedRun[] {
  const names = runs.map((r) => r.name);
  const unique = names.every((n, i) => n !== undefined && names.indexOf(n) === i);
  const dirs = runs.map((r) => basename(resolve(r.dir)));
  // Sweep variants sit side by side, so their basenames differ; otherwise show the given paths.
  const distinctDirs = new Set(dirs).size === dirs.length;
  return runs.map((r, i) => ({
    ...r,
    label: unique ? r.name! : distinctDirs ? dirs[i] : r.dir,
  }));
}

/** Options of {@link plotSpec}. */
export interface PlotSpecOptions {
  /** Width of each panel in px. Default 420. */
  width?: number;
  /** Height of each panel in px. Default 260. */
  height?: number;
  /** Chart title. Default: the run label, or "N runs". */
  title?: string;
}

/**
 * The vega-lite spec of the two panels: held-out loss (lines with a point per evaluation) and
 * mean fitness, against iteration, colored by run. Rows are flat {run, iter, eval_loss?,
 * fitness_mean} records in one inline dataset, so one run or twenty cost the same spec.
 */
export function plotSpec(runs: PlottedRun[], options: PlotSpecOptions = {}): vegaLite.TopLevelSpec {
  // A reward run (fitness type reward) draws its reward instead: see rewardPlotSpec.
  if (runs.some((r) => r.lines.some((l) => typeof rewardFields(l).reward_mean === "number"))) {
    return rewardPlotSpec(runs, options);
  }
  const width = options.width ?? 420, height = options.height ?? 260;
  const values = runs.flatMap((r) =>
    r.lines.map((l) => ({
      run: r.label,
      iter: l.iter,
      fitness_mean: l.fitness_mean,
      eval_loss: l.eval_loss ?? null,
    }))
  );
  const x = {
    field: "iter",
    type: "quantitative" as const,
    title: "iteration",
    scale: { nice: false },
    // Iterations are whole: no 0.5 ticks on a short run.
    axis: { tickMinStep: 1, format: "d" },
  };
  const color = {
    field: "run",
    type: "nominal" as const,
    title: "run",
    // Keep the order the runs were given (a sweep's values in order), not alphabetical.
    sort: runs.map((r) => r.label),
  };
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: options.title ?? (runs.length === 1 ? runs[0].label : `${runs.length} runs`),
    data: { values },
    config: { font: "DejaVu Sans, Liberation Sans, Arial, sans-serif", background: "white" },
    hconcat: [
      {
        width,
        height,
        title: "held-out loss (nats per token)",
        transform: [{ filter: "isValid(datum.eval_loss)" }],
        mark: { type: "line", point: { size: 24 }, strokeWidth: 1.8 },
        encoding: {
          x,
          y: { field: "eval_loss", type: "quantitative", title: "loss", scale: { zero: false } },
          color,
        },
      },
      {
        width,
        height,
        title: "fitness (mean log-likelihood per token)",
        mark: { type: "line", strokeWidth: 1.5 },
        encoding: {
          x,
          y: {
            field: "fitness_mean",
            type: "quantitative",
            title: "fitness",
            scale: { zero: false },
          },
          color,
        },
      },
    ],
  };
}

/** The reward fields of a reward run's metrics line (pipeline/reward_run.ts RewardLineFields). */
function rewardFields(l: MetricsLine): { reward_mean?: number; eval_reward?: number } {
  return l as { reward_mean?: number; eval_reward?: number };
}

/**
 * The spec of reward runs (fitness type reward): the population's mean reward against iteration
 * (a line per run) with θ's held-out reward as points where it was evaluated, and the held-out
 * loss beside it when a run measured one.
 */
export function rewardPlotSpec(
  runs: PlottedRun[],
  options: PlotSpecOptions = {},
): vegaLite.TopLevelSpec {
  const width = options.width ?? 420, height = options.height ?? 260;
  const values = runs.flatMap((r) =>
    r.lines.map((l) => ({
      run: r.label,
      iter: l.iter,
      reward_mean: rewardFields(l).reward_mean ?? null,
      eval_reward: rewardFields(l).eval_reward ?? null,
      eval_loss: l.eval_loss ?? null,
    }))
  );
  const x = {
    field: "iter",
    type: "quantitative" as const,
    title: "iteration",
    scale: { nice: false },
    axis: { tickMinStep: 1, format: "d" },
  };
  const color = {
    field: "run",
    type: "nominal" as const,
    title: "run",
    sort: runs.map((r) => r.label),
  };
  const reward = {
    width,
    height,
    title: "reward (line: population mean; points: θ's held-out reward)",
    layer: [
      {
        transform: [{ filter: "isValid(datum.reward_mean)" }],
        mark: { type: "line" as const, strokeWidth: 1.5 },
        encoding: {
          x,
          y: {
            field: "reward_mean",
            type: "quantitative" as const,
            title: "reward",
            scale: { zero: false },
          },
          color,
        },
      },
      {
        transform: [{ filter: "isValid(datum.eval_reward)" }],
        mark: { type: "point" as const, filled: true, size: 36 },
        encoding: { x, y: { field: "eval_reward", type: "quantitative" as const }, color },
      },
    ],
  };
  const loss = {
    width,
    height,
    title: "held-out loss (nats per token)",
    transform: [{ filter: "isValid(datum.eval_loss)" }],
    mark: { type: "line" as const, point: { size: 24 }, strokeWidth: 1.8 },
    encoding: {
      x,
      y: {
        field: "eval_loss",
        type: "quantitative" as const,
        title: "loss",
        scale: { zero: false },
      },
      color,
    },
  };
  const withLoss = values.some((v) => v.eval_loss !== null);
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: options.title ?? (runs.length === 1 ? runs[0].label : `${runs.length} runs`),
    data: { values },
    config: { font: "DejaVu Sans, Liberation Sans, Arial, sans-serif", background: "white" },
    hconcat: withLoss ? [reward, loss] : [reward],
  };
}

/** Renders a vega-lite spec to an SVG string with vega's headless View. */
export async function renderSvg(spec: vegaLite.TopLevelSpec): Promise<string> {
  const compiled = vegaLite.compile(spec).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: "none" });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Rasterizes an SVG to PNG bytes with resvg, at `scale` × the SVG's own size. */
export function svgToPng(svg: string, options: { scale?: number } = {}): Uint8Array {
  const resvg = new Resvg(svg, {
    fitTo: { mode: "zoom", value: options.scale ?? 2 },
    // System fonts render the labels; with none installed resvg still draws lines and axes.
    font: { loadSystemFonts: true, defaultFontFamily: "DejaVu Sans" },
    background: "white",
  });
  return resvg.render().asPng();
}

/** Options of {@link plotRuns}. */
export interface PlotRunsOptions extends PlotSpecOptions {
  /** Output file, .svg or .png. Default RUN_DIR/plot.svg for one run, ./plot.svg for several. */
  out?: string;
}

/** Checks an output path's extension; returns the format. */
export function outputFormat(out: string): "svg" | "png" {
  const ext = extname(out).toLowerCase();
  if (ext === ".svg" || ext === ".png") return ext.slice(1) as "svg" | "png";
  throw new UserError(`--out ${out}: unknown extension "${ext}"; use .svg or .png`);
}

/** Reads the runs, draws them and writes the plot; returns the path written. */
export async function plotRuns(dirs: string[], options: PlotRunsOptions = {}): Promise<string> {
  if (dirs.length === 0) throw new UserError(`give at least one run dir; usage: ${USAGE}`);
  const out = options.out ?? (dirs.length === 1 ? join(dirs[0], "plot.svg") : "plot.svg");
  const format = outputFormat(out);
  const runs = labelRuns(await Promise.all(dirs.map(readRun)));
  const svg = await renderSvg(plotSpec(runs, options));
  try {
    await Deno.mkdir(dirname(out), { recursive: true });
    if (format === "svg") await Deno.writeTextFile(out, svg);
    else await Deno.writeFile(out, svgToPng(svg));
  } catch (e) {
    throw new UserError(`--out ${out}: cannot write (${(e as Error).message.split("\n")[0]})`);
  }
  return out;
}

if (import.meta.main) {
  await runMain("plot", async () => {
    const { values, positionals } = parseFlags(Deno.args, {
      out: { type: "string", short: "o" },
    }, USAGE);
    const out = await plotRuns(positionals, { out: values.out });
    const rel = relative(Deno.cwd(), out);
    console.log(`plot: ${rel === "" || rel.startsWith("..") ? resolve(out) : rel}`);
  });
}
