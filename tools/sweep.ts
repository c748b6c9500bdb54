/**
 * `deno task sweep`: one pipeline trained once per value of one key, then plotted together.
 *
 *   deno task sweep PIPELINE.yaml --set KEY=V1,V2,… [--out DIR] [--iterations N] [--quiet]
 *
 * For example the paper's ablations (EA4LLM, Figures 4 and 5):
 *
 *   deno task sweep configs/pipelines/qwen3-0.5b.yaml --set perturb.population=20,30,40
 *   deno task sweep configs/pipelines/qwen3-0.5b.yaml \
 *     --set dataset.samples_per_iteration=1000,3000,5000,7000
 *
 * Each variant is the pipeline with KEY set to one value, written as DIR/LEAF=VALUE.yaml (LEAF
 * is the key's last segment) and trained into DIR/LEAF=VALUE/ by tools/train.ts, one after
 * another, with no status server (variants would contend for its port). DIR/plot.svg shows
 * them all, labelled LEAF=VALUE. DIR defaults to runs/NAME-sweep-KEY.
 *
 * The key and every value are checked against the pipeline before anything is written or run:
 * a bad key, value or flag is one line and exit code 2. A variant whose training fails stops the
 * sweep with that variant's exit code; the runs before it stay in DIR.
 *
 * @module
 */
import { isAbsolute, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parse as parseYaml, parseDocument } from "yaml";
import {
  type CommandHelp,
  type DocumentedFlag,
  intFlag,
  parseFlags,
  runMain,
  usageLine,
} from "./cli.ts";
import { plotRuns } from "./plot.ts";
import { UserError } from "../errors.ts";
import {
  closest,
  type LoadedPipeline,
  loadPipelineFile,
  loadPipelineText,
} from "../pipeline/load.ts";
import { STAGE_KINDS } from "../pipeline/spec.ts";

/** sweep's flags: the parser, the usage line and `--help` all come from this table. */
export const SWEEP_FLAGS = {
  set: {
    type: "string",
    value: "KEY=V1,V2,…",
    help: "the pipeline key to vary (dotted, e.g. perturb.population) and its values",
    default: "required",
  },
  out: {
    type: "string",
    value: "DIR",
    help: "where the variants' pipelines, runs and plot.svg go",
    default: "runs/NAME-sweep-KEY",
  },
  iterations: {
    type: "string",
    value: "N",
    help: "iterations of every variant",
    default: "the pipeline's",
  },
  quiet: { type: "boolean", help: "print only errors and the closing line" },
} satisfies Record<string, DocumentedFlag>;

/** What `deno task sweep --help` says besides the flags. */
export const SWEEP_HELP: CommandHelp = {
  command: "deno task sweep",
  synopsis: "PIPELINE.yaml --set KEY=V1,V2,… [--out DIR] [--iterations N] [--quiet]",
  about: "Trains a pipeline once per value of one key, one after another, then plots the runs " +
    "together.",
  positionals: [["PIPELINE.yaml", "the pipeline to vary (required)"]],
  example: "deno task sweep configs/pipelines/micro-smoke.yaml --set perturb.population=4,8,16 " +
    "--iterations 20",
};

const USAGE = usageLine(SWEEP_FLAGS, SWEEP_HELP);

const TRAIN = fileURLToPath(new URL("./train.ts", import.meta.url));

/** A parsed `--set KEY=V1,V2,…`. */
export interface SweepSetting {
  /** The key path, e.g. ["perturb", "population"]. */
  path: string[];
  /** The values as YAML scalars (numbers stay numbers). */
  values: unknown[];
  /** The values as the user wrote them, for names. */
  raw: string[];
}

/** Parses `KEY=V1,V2,…`; throws a {@link UserError} naming the fix. */
export function parseSet(arg: string): SweepSetting {
  const eq = arg.indexOf("=");
  const key = eq < 0 ? "" : arg.slice(0, eq).trim();
  if (eq < 0 || key === "") {
    throw new UserError(`--set ${arg}: give KEY=V1,V2,... such as perturb.population=4,8,16`);
  }
  const path = key.split(".");
  if (path.some((s) => !/^[A-Za-z0-9_]+$/.test(s))) {
    throw new UserError(`--set ${key}: a key is dot-separated names, such as perturb.population`);
  }
  const raw = arg.slice(eq + 1).split(",").map((v) => v.trim());
  if (raw.some((v) => v === "")) {
    throw new UserError(`--set ${arg}: empty value; give comma-separated values such as 4,8,16`);
  }
  const dup = raw.find((v, i) => raw.indexOf(v) !== i);
  if (dup !== undefined) throw new UserError(`--set ${key}: value ${dup} is given twice`);
  // A value names its variant's file and dir: keep it to characters safe in both.
  const unsafe = raw.find((v) => !/^[A-Za-z0-9._+-]+$/.test(v));
  if (unsafe !== undefined) {
    throw new UserError(
      `--set ${key}: value "${unsafe}" has characters not allowed in a run dir name; ` +
        "use letters, digits, '.', '_', '+' and '-'",
    );
  }
  return { path, values: raw.map((v) => parseYaml(v)), raw };
}

/**
 * Checks that `path` names a setting of the pipeline: every segment but the last must be a map
 * in the validated spec, and the last must not be a map itself. A last segment absent from the
 * spec may still be an optional key with no default: then this returns the keys its map does
 * have, for the caller to suggest from if the schema rejects it; otherwise null.
 */
export function checkKeyPath(spec: Record<string, unknown>, path: string[]): string[] | null {
  const key = path.join(".");
  let node: unknown = spec;
  for (let i = 0; i < path.length; i++) {
    const seg = path[i];
    const here = path.slice(0, i).join(".");
    if (node === null || typeof node !== "object" || Array.isArray(node)) {
      throw new UserError(`--set ${key}: ${here} is a value, not a section; sweep ${here} itself`);
    }
    const map = node as Record<string, unknown>;
    if (!(seg in map)) {
      if (i === path.length - 1 && i > 0) return Object.keys(map);
      const known = Object.keys(map);
      const guess = closest(seg, known);
      throw new UserError(
        `--set ${key}: the pipeline has no key "${seg}"${here ? ` in ${here}` : ""}; ` +
          (guess
            ? `did you mean ${[...path.slice(0, i), guess].join(".")}?`
            : `known: ${known.join(", ")}`),
      );
    }
    node = map[seg];
  }
  if (node !== null && typeof node === "object") {
    throw new UserError(
      `--set ${key}: ${key} is a section; sweep one of its keys (${
        Object.keys(node).map((k) => `${key}.${k}`).join(", ")
      })`,
    );
  }
  return null;
}

/** One variant of a sweep: its name, its pipeline YAML and where it trains. */
export interface SweepVariant {
  /** LEAF=VALUE: the legend label and the file and dir name. */
  label: string;
  /** The variant pipeline file, DIR/LEAF=VALUE.yaml. */
  file: string;
  /** Its run dir, DIR/LEAF=VALUE. */
  runDir: string;
  /** The YAML text. */
  text: string;
}

/**
 * The variants' YAML: the pipeline's own document (comments kept) with the key set, the run dir
 * set, and relative file paths made absolute, because the variant file lives in the sweep dir
 * and relative paths resolve against the pipeline file's directory. Each is validated with the
 * pipeline loader; a bad value throws a {@link UserError} naming it.
 */
export function sweepVariants(
  loaded: LoadedPipeline,
  setting: SweepSetting,
  o: { dir: string },
): SweepVariant[] {
  const key = setting.path.join(".");
  if (key === "output.dir") {
    throw new UserError("--set output.dir: the sweep gives each variant its own dir; use --out");
  }
  const siblings = checkKeyPath(loaded.spec as unknown as Record<string, unknown>, setting.path);
  const leaf = setting.path[setting.path.length - 1];
  return setting.values.map((value, i) => {
    const label = `${leaf}=${setting.raw[i]}`;
    const file = join(o.dir, `${label}.yaml`);
    const runDir = join(o.dir, label);
    const doc = parseDocument(loaded.text);
    for (const kind of STAGE_KINDS) {
      for (const [k, v] of Object.entries(loaded.spec[kind] ?? {})) {
        if (k === "type" || typeof v !== "string" || isAbsolute(v) || key === `${kind}.${k}`) {
          continue;
        }
        const abs = resolve(loaded.baseDir, v);
        // Only strings that name an existing file or dir are paths; "random", "bytes" are not.
        if (existsSync(abs)) doc.setIn([kind, k], abs);
      }
    }
    doc.setIn(setting.path, value);
    doc.setIn(["output", "dir"], resolve(runDir));
    const body = doc.toString();
    try {
      // Setting an existing key keeps every line where it was, so file:line:col in a message
      // points into the user's own pipeline file.
      loadPipelineText(body, { file: loaded.file });
    } catch (e) {
      if (!(e instanceof UserError)) throw e;
      if (siblings !== null) {
        // The key was not in the file: a position in the edited text would mislead.
        const guess = closest(leaf, siblings);
        const section = setting.path.slice(0, -1).join(".");
        throw new UserError(
          `--set ${key}: the pipeline has no key "${leaf}" in ${section}; ` +
            (guess ? `did you mean ${section}.${guess}?` : `known: ${siblings.join(", ")}`),
        );
      }
      throw new UserError(`--set ${key}=${setting.raw[i]}: ${e.message}`);
    }
    const text =
      `# ${label}: variant of ${resolve(loaded.file)} (deno task sweep --set ${key}=…)\n` +
      body;
    return { label, file, runDir, text };
  });
}

function existsSync(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Options of {@link runSweep}. */
export interface SweepOptions {
  /** The sweep dir. Default runs/NAME-sweep-KEY. */
  out?: string;
  /** Total iterations of every variant (train's --iterations). */
  iterations?: number;
  /** Passes --quiet to train. */
  quiet?: boolean;
}

/** What a sweep wrote. */
export interface SweepResult {
  dir: string;
  variants: SweepVariant[];
  plot: string;
}

/** Runs the sweep: validate everything, write the variants, train each, plot them together. */
export async function runSweep(
  pipelineFile: string,
  set: string,
  options: SweepOptions = {},
): Promise<SweepResult> {
  const setting = parseSet(set);
  const loaded = await loadPipelineFile(pipelineFile);
  const dir = options.out ?? join("runs", `${loaded.spec.name}-sweep-${setting.path.join(".")}`);
  const variants = sweepVariants(loaded, setting, { dir });
  for (const v of variants) {
    if (existsSync(v.runDir)) {
      throw new UserError(`${v.runDir} already exists; choose another --out or remove it`);
    }
  }
  await Deno.mkdir(dir, { recursive: true });
  for (const v of variants) await Deno.writeTextFile(v.file, v.text);

  for (const [i, v] of variants.entries()) {
    console.log(`sweep ${i + 1}/${variants.length}: ${v.label} → ${v.runDir}`);
    const args = ["run", "-A", TRAIN, v.file, "--out", v.runDir, "--no-status"];
    if (options.iterations !== undefined) args.push("--iterations", String(options.iterations));
    if (options.quiet) args.push("--quiet");
    const { code } = await new Deno.Command(Deno.execPath(), {
      args,
      stdin: "null",
      stdout: "inherit",
      stderr: "inherit",
    }).output();
    if (code !== 0) {
      console.error(
        `esflow sweep: ${v.label} failed (train exit code ${code}); runs so far in ${dir}`,
      );
      Deno.exit(code);
    }
  }
  const plot = await plotRuns(variants.map((v) => v.runDir), {
    out: join(dir, "plot.svg"),
    title: `${loaded.spec.name}: ${setting.path.join(".")}`,
  });
  return { dir, variants, plot };
}

if (import.meta.main) {
  await runMain("sweep", async () => {
    const { values, positionals } = parseFlags(Deno.args, SWEEP_FLAGS, SWEEP_HELP);
    if (positionals.length !== 1) throw new UserError(`give one pipeline file; usage: ${USAGE}`);
    if (values.set === undefined) throw new UserError(`give --set KEY=V1,V2,...; usage: ${USAGE}`);
    const iterations = values.iterations === undefined
      ? undefined
      : intFlag(values.iterations, "iterations", 1);
    const result = await runSweep(positionals[0], values.set, {
      out: values.out,
      iterations,
      quiet: values.quiet,
    });
    const n = result.variants.length;
    console.log(`sweep: ${n} run${n === 1 ? "" : "s"} in ${result.dir}; plot ${result.plot}`);
  });
}
