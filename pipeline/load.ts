/**
 * Loading a pipeline YAML file: parse (yaml's parseDocument with a LineCounter), validate against
 * the strict schema built from the stage registry, apply the command-line overrides, and run the
 * checks across keys that need no files. Every fault is a one-line {@link UserError}
 * `file:line:col: path.to.key: message`, placed at the node the user has to edit, and the message
 * says the fix.
 *
 * Every check across keys lives here, in one table ({@link crossFieldIssues}): those that need
 * the files or the model (a held-out split larger than the corpus, max_len beyond the model's
 * positions, a tokenizer larger than the model's vocabulary, a rank beyond the model's matrices)
 * run when resolve.ts has read them. A stage's own file faults (a missing corpus, an unknown
 * preset) are raised by the stage.
 *
 * @module
 */
import { isCollection, isMap, isScalar, isSeq, LineCounter, type Node, parseDocument } from "yaml";
import { fileURLToPath } from "node:url";
import { dirname, resolve as resolvePath } from "node:path";
import {
  createStage,
  pipelineSchema,
  type PipelineSpec,
  STAGE_KINDS,
  type StageKind,
  stageTypes,
} from "./spec.ts";
import { UserError } from "../errors.ts";
import type { Qwen3Config } from "../model/config.ts";
import type { Tokenizer } from "../tokenizers/mod.ts";
import "./stages/mod.ts";
import { maxLowRank } from "./stages/perturb.ts";
import { fitnessBatching } from "./stages/fitness.ts";
import type { DatasetImpl, ModelImpl, PerturbImpl, UpdateImpl } from "./stages/types.ts";

/** The embedded default pipeline that `deno task train` runs with no argument. */
export const DEFAULT_PIPELINE_PATH: string = fileURLToPath(
  new URL("../configs/pipelines/tiny-austen.yaml", import.meta.url),
);

/** A key path into the pipeline document: map keys and sequence indices. */
export type KeyPath = readonly (string | number)[];

/** Command-line settings that replace the YAML's. */
export interface PipelineOverrides {
  /** `--iterations`: the total number of iterations (not the number still to run). */
  iterations?: number;
  /** `--backend`: auto, webgpu or cpu. */
  backend?: "auto" | "webgpu" | "cpu";
  /** `--seed`: the run seed. */
  seed?: number;
  /** `--out`: the output directory (output.dir). */
  out?: string;
}

/** A validated pipeline and what is needed to point at its source. */
export interface LoadedPipeline {
  /** The validated spec, defaults filled and overrides applied. */
  spec: PipelineSpec;
  /** The pipeline file, as the user named it (messages use it). */
  file: string;
  /** The file's directory, absolute: relative paths in the pipeline resolve against it. */
  baseDir: string;
  /** The YAML text. */
  text: string;
  /** "file:line:col" of the deepest node of the document that exists on `path`. */
  where(path: KeyPath): string;
  /**
   * Settings that load but are likely mistakes (a micro_batch larger than the samples it
   * batches), each one line `file:line:col: key: what and the fix`; train prints them.
   */
  warnings: string[];
}

/** One fault found in a pipeline, before it is placed and formatted. */
export interface PipelineIssue {
  /** Key path of the offending node; the message prefix names it. */
  path: KeyPath;
  /** What is wrong and how to fix it. */
  message: string;
  /** Point at the key itself rather than its value (an unknown key). */
  atKey?: boolean;
  /** Path to name in the prefix when it differs from `path` (a missing key names its parent). */
  at?: KeyPath;
  /** A likely mistake rather than an error: reported, and the pipeline still runs. */
  warning?: boolean;
}

/**
 * Reads and loads a pipeline file. A missing or unreadable file is a {@link UserError} too.
 */
export async function loadPipelineFile(
  path: string,
  options: { overrides?: PipelineOverrides } = {},
): Promise<LoadedPipeline> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound
      ? "no such file"
      : e instanceof Deno.errors.IsADirectory
      ? "is a directory, not a YAML file"
      : (e as Error).message.split("\n")[0];
    throw new UserError(
      `${path}: cannot read the pipeline (${why}); give the path of a pipeline YAML file`,
    );
  }
  return loadPipelineText(text, { file: path, overrides: options.overrides });
}

/**
 * Parses and validates pipeline YAML `text` that came from `file` (for messages and for the
 * directory relative paths resolve against). Throws a one-line {@link UserError} at the first
 * fault in document order, counting the others as "(+N more)".
 */
export function loadPipelineText(
  text: string,
  options: { file: string; overrides?: PipelineOverrides },
): LoadedPipeline {
  const { file } = options;
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const pos = (offset: number) => {
    const { line, col } = lineCounter.linePos(offset);
    return `${file}:${line}:${col}`;
  };

  // Syntax errors first: past one, the tree is a guess and schema errors would mislead.
  if (doc.errors.length > 0) {
    const e = doc.errors[0];
    const message = e.code === "DUPLICATE_KEY"
      ? `duplicate key '${sourceAt(text, e.pos[0])}'; a key may appear once per map, remove one`
      : `YAML syntax: ${e.message.split("\n")[0]}`;
    throw new UserError(`${pos(e.pos[0])}: ${message}${more(doc.errors.length - 1)}`);
  }

  const locate = (path: KeyPath, atKey = false) => locateNode(doc.contents, path, atKey);
  const where = (path: KeyPath) => pos(locate(path));
  const fail = (issues: PipelineIssue[]): never => {
    const placed = issues.map((issue) => ({ issue, offset: locate(issue.path, issue.atKey) }));
    // Stable sort: issues at one place keep the schema's order.
    placed.sort((a, b) => a.offset - b.offset);
    const { issue, offset } = placed[0];
    const named = issue.at ?? issue.path;
    const prefix = named.length > 0 ? `${named.join(".")}: ` : "";
    throw new UserError(`${pos(offset)}: ${prefix}${issue.message}${more(placed.length - 1)}`);
  };

  let data: unknown;
  try {
    data = doc.toJS();
  } catch (e) {
    // An alias bomb or an unresolvable alias.
    fail([{ path: [], message: `YAML: ${(e as Error).message.split("\n")[0]}` }]);
  }
  if (data === null || data === undefined) {
    fail([{
      path: [],
      message: `the pipeline is empty; it needs the stages ${STAGE_KINDS.join(", ")}`,
    }]);
  }

  const schema = pipelineSchema();
  const parsed = schema.safeParse(data);
  if (!parsed.success) fail(explainIssues(parsed.error.issues as ZodIssueLike[], data, schema));
  const spec = parsed.data as unknown as PipelineSpec;

  const semantic = crossFieldIssues(spec);
  const errors = semantic.filter((i) => !i.warning);
  if (errors.length > 0) fail(errors);
  const warnings = semantic.filter((i) => i.warning).map((i) =>
    `${pos(locate(i.path, i.atKey))}: ${(i.at ?? i.path).join(".")}: ${i.message}`
  );

  applyOverrides(spec, options.overrides ?? {}, schema);
  return { spec, file, baseDir: dirname(resolvePath(file)), text, where, warnings };
}

/** " (+N more)" when there are other faults, so the user knows to run again after fixing one. */
function more(n: number): string {
  return n > 0 ? ` (+${n} more)` : "";
}

/** The scalar token starting at `offset` (a duplicate key's name). */
function sourceAt(text: string, offset: number): string {
  return /^[^:\n]*/.exec(text.slice(offset))![0].trim().replace(/^["']|["']$/g, "");
}

/**
 * Offset of the deepest node on `path`. A value is pointed at where it starts, except a block
 * map or list (which starts at its first child, a line too far) and an empty value: there the key
 * that owns it is the place. With `atKey`, the last step points at the key itself.
 */
function locateNode(root: Node | null, path: KeyPath, atKey: boolean): number {
  let node: unknown = root;
  let offset = root?.range?.[0] ?? 0;
  for (let i = 0; i < path.length; i++) {
    const seg = path[i];
    if (isMap(node)) {
      const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(seg));
      if (!pair) break;
      const keyOffset = (pair.key as Node).range?.[0] ?? offset;
      const value = pair.value as Node | null;
      const last = i === path.length - 1;
      const empty = !value?.range || value.range[0] === value.range[1];
      if ((last && atKey) || !value || empty || (isCollection(value) && !value.flow)) {
        offset = keyOffset;
      } else {
        offset = value.range![0];
      }
      node = value;
    } else if (isSeq(node)) {
      const item = node.items[Number(seg)] as Node | undefined;
      if (!item?.range) break;
      offset = item.range[0];
      node = item;
    } else {
      break;
    }
  }
  return offset;
}

/** The fields of a zod 4 issue this module reads. */
interface ZodIssueLike {
  code: string;
  path: PropertyKey[];
  message: string;
  expected?: string;
  minimum?: number | bigint;
  maximum?: number | bigint;
  inclusive?: boolean;
  origin?: string;
  keys?: string[];
  values?: unknown[];
  options?: unknown[];
  note?: string;
}

/**
 * Turns zod's issues into messages that say the fix. Unknown keys become one issue per key;
 * several bounds failed by one number (positive and ≥ 2) keep the tightest.
 */
function explainIssues(raw: ZodIssueLike[], data: unknown, schema: unknown): PipelineIssue[] {
  const issues: PipelineIssue[] = [];
  const bounds = new Map<string, { issue: PipelineIssue; bound: number }>();
  for (const zi of raw) {
    const path = zi.path.map((p) => (typeof p === "number" ? p : String(p)));
    const value = valueAt(data, path);
    const parent = path.slice(0, -1);
    const last = path[path.length - 1];
    const kind = path.length >= 1 && (STAGE_KINDS as readonly unknown[]).includes(path[0])
      ? path[0] as StageKind
      : undefined;

    if (zi.code === "unrecognized_keys") {
      const known = objectKeys(schema, path, data) ?? [];
      for (const key of zi.keys ?? []) {
        issues.push({ path: [...path, key], atKey: true, message: unknownKeyMessage(key, known) });
      }
      continue;
    }
    if (
      kind && path.length === 2 && last === "type" &&
      (zi.code === "invalid_union" || zi.code === "invalid_value")
    ) {
      issues.push({ path, message: unknownTypeMessage(kind, value) });
      continue;
    }
    if (zi.code === "invalid_type" && value === undefined && !hasKey(data, path)) {
      if (kind && path.length === 1) {
        const types = stageTypes(kind).map((t) => t.type);
        issues.push({
          path,
          at: [],
          message: `missing stage '${kind}'; add ${kind}: { type: ${types[0]}, ... } (types: ${
            types.join(", ")
          })`,
        });
      } else {
        issues.push({
          path,
          message: `missing required key '${String(last)}'; add it${
            parent.length ? ` under ${parent.join(".")}` : ""
          }`,
        });
      }
      continue;
    }
    if (zi.code === "invalid_type" && path.length === 0) {
      issues.push({
        path,
        message: `the pipeline must be a YAML map of name, seed, iterations, the stages ${
          STAGE_KINDS.join(", ")
        } and output; got ${describe(value)}`,
      });
      continue;
    }
    if (zi.code === "invalid_type" && kind && path.length === 1) {
      // A stage given as a bare name (`shape: rank`) or left empty.
      const types = stageTypes(kind).map((t) => t.type);
      const example = typeof value === "string" && types.includes(value) ? value : types[0];
      issues.push({
        path,
        message:
          `a stage is a map with a type and its settings, got ${
            describe(value)
          }; write ${kind}: { type: ${example} } ` +
          `(types: ${types.join(", ")})`,
      });
      continue;
    }
    if (zi.code === "invalid_type") {
      issues.push({ path, message: wrongTypeMessage(zi.expected ?? "", value) });
      continue;
    }
    if ((zi.code === "too_small" || zi.code === "too_big") && typeof value === "number") {
      const small = zi.code === "too_small";
      const bound = Number(small ? zi.minimum : zi.maximum);
      const rel = small ? (zi.inclusive ? "≥" : ">") : (zi.inclusive ? "≤" : "<");
      const issue = { path, message: `must be ${rel} ${bound}, got ${value}` };
      // One number can fail several bounds (positive, then ≥ 2): report only the tightest.
      const id = `${zi.code}:${path.join("\u0000")}`;
      const seen = bounds.get(id);
      if (!seen) {
        bounds.set(id, { issue, bound });
        issues.push(issue);
      } else if (small ? bound > seen.bound : bound < seen.bound) {
        seen.issue.message = issue.message;
        seen.bound = bound;
      }
      continue;
    }
    if (zi.code === "too_small" && typeof value === "string") {
      issues.push({ path, message: "must not be empty" });
      continue;
    }
    if (zi.code === "invalid_format") {
      issues.push({ path, message: `${zi.message} (got ${JSON.stringify(value)})` });
      continue;
    }
    if (zi.code === "invalid_value" && zi.values) {
      issues.push({
        path,
        message: `expected ${zi.values.map((v) => JSON.stringify(v)).join(" or ")}, got ${
          describe(value)
        }`,
      });
      continue;
    }
    issues.push({ path, message: zi.message });
  }
  return issues;
}

function unknownKeyMessage(key: string, known: string[]): string {
  const near = closest(key, known);
  if (near) return `unknown key '${key}' (did you mean '${near}'?)`;
  return known.length > 0
    ? `unknown key '${key}'; the keys here are ${known.join(", ")}`
    : `unknown key '${key}'; remove it`;
}

function unknownTypeMessage(kind: StageKind, value: unknown): string {
  const types = stageTypes(kind).map((t) => t.type);
  const list = `registered ${kind} types: ${types.join(", ")}`;
  if (value === undefined || value === null) return `missing 'type'; ${list}`;
  if (typeof value !== "string") return `type must be a name, got ${describe(value)}; ${list}`;
  const near = closest(value, types);
  return `unknown ${kind} type '${value}'${near ? ` (did you mean '${near}'?)` : ""}; ${list}`;
}

function wrongTypeMessage(expected: string, value: unknown): string {
  const names: Record<string, string> = {
    object: "a map",
    array: "a list",
    number: "a number",
    int: "an integer",
    string: "a string",
    boolean: "true or false",
  };
  const want = names[expected] ?? expected;
  if (value === null) return `no value given; expected ${want}`;
  let hint = "";
  if (
    typeof value === "string" && (expected === "number" || expected === "int") &&
    value.trim() !== "" && Number.isFinite(Number(value))
  ) {
    hint = "; remove the quotes";
  } else if (typeof value === "string" && expected === "boolean") {
    hint = "; write true or false (YAML 1.2 reads yes/no/on/off as strings)";
  } else if (typeof value === "number" && expected === "int") {
    hint = "; use a whole number";
  }
  return `expected ${want}, got ${describe(value)}${hint}`;
}

/** A value as a message shows it. */
function describe(value: unknown): string {
  if (value === null) return "nothing";
  if (Array.isArray(value)) return "a list";
  if (typeof value === "string") return `the string ${JSON.stringify(value)}`;
  if (typeof value === "object") return "a map";
  return String(value);
}

function valueAt(data: unknown, path: KeyPath): unknown {
  let v = data;
  for (const seg of path) {
    if (v === null || typeof v !== "object") return undefined;
    v = (v as Record<string | number, unknown>)[seg];
  }
  return v;
}

function hasKey(data: unknown, path: KeyPath): boolean {
  const parent = valueAt(data, path.slice(0, -1));
  return parent !== null && typeof parent === "object" &&
    Object.hasOwn(parent, path[path.length - 1]);
}

/** zod 4's internal definition of a schema (the only way to list an object's keys generically). */
// deno-lint-ignore no-explicit-any
type ZodDef = { type: string; [k: string]: any };
// deno-lint-ignore no-explicit-any
const defOf = (schema: any): ZodDef | undefined => schema?._zod?.def;

/** Strips wrappers (default, optional, ...) and picks a union's member by the data's `type`. */
function unwrap(schema: unknown, data: unknown): unknown {
  for (let guard = 0; guard < 32; guard++) {
    const def = defOf(schema);
    if (!def) return undefined;
    if (
      ["optional", "default", "prefault", "nullable", "nonoptional", "readonly", "catch"].includes(
        def.type,
      )
    ) {
      schema = def.innerType;
    } else if (def.type === "pipe") {
      schema = def.in;
    } else if (def.type === "union") {
      const type = (data as Record<string, unknown> | undefined)?.type;
      const options = def.options as unknown[];
      schema = options.find((o) => {
        const lit = defOf(defOf(unwrap(o, undefined))?.shape?.type);
        return lit?.type === "literal" && (lit.values as unknown[]).includes(type);
      }) ?? options[0];
    } else {
      return schema;
    }
  }
  return undefined;
}

/** The keys the schema allows for the object at `path`, or undefined if it is not an object. */
function objectKeys(schema: unknown, path: KeyPath, data: unknown): string[] | undefined {
  let s = schema;
  let d = data;
  for (const seg of path) {
    s = unwrap(s, d);
    const def = defOf(s);
    if (def?.type === "object") s = def.shape[seg];
    else if (def?.type === "array") s = def.element;
    else return undefined;
    d = (d as Record<string | number, unknown> | undefined)?.[seg];
  }
  const def = defOf(unwrap(s, d));
  return def?.type === "object" ? Object.keys(def.shape) : undefined;
}

/**
 * The known name closest to `name` by edit distance (adjacent swaps count one), if close enough
 * to be a typo: at most 1 edit for short names, 2 for longer ones.
 */
export function closest(name: string, known: readonly string[]): string | undefined {
  const limit = name.length <= 4 ? 1 : 2;
  let best: string | undefined;
  let bestDist = Infinity;
  for (const k of known) {
    const d = editDistance(name.toLowerCase(), k.toLowerCase());
    if (d < bestDist) {
      best = k;
      bestDist = d;
    }
  }
  return bestDist <= limit ? best : undefined;
}

/** Optimal string alignment distance: insert, delete, substitute, swap adjacent. */
function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from(
    { length: a.length + 1 },
    (_, i) => [i, ...new Array(b.length).fill(0)],
  );
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.length][b.length];
}

/** What the checks that need files know: the corpus, the tokenizer and the model (resolve.ts). */
export interface ResolvedFacts {
  /** Every sample of the corpus (after max_lines), held-out ones included. */
  texts: readonly string[];
  tokenizer: Tokenizer;
  config: Qwen3Config;
}

/** The stages the cross-field checks read, as their typed implementations. */
interface CheckedStages {
  dataset: DatasetImpl;
  model: ModelImpl;
  perturb: PerturbImpl;
  update: UpdateImpl;
  fitness: ReturnType<typeof fitnessBatching>;
}

/** The largest finite f32, 2^128 − 2^104: the kernels compute σ, α and θ in f32. */
export const F32_MAX = 3.4028234663852886e38;
/** The smallest positive f32 (a subnormal): below it a value rounds to 0 in the kernels. */
export const F32_MIN_POSITIVE = 1.401298464324817e-45;

/**
 * σ or α outside what f32 kernels can hold: above F32_MAX it is Inf, below the smallest f32 it
 * is 0, and (for σ) a scale whose noise σ·ε overflows f32 (ε reaches about ±6) is no better.
 */
function f32RangeIssue(path: KeyPath, v: number, o: { name: string; typical: string }) {
  const max = path[0] === "perturb" ? F32_MAX / 8 : F32_MAX;
  if (v <= max && Math.fround(v) >= F32_MIN_POSITIVE) return [];
  return [{
    path,
    message: `${o.name} ${v} is outside the f32 range the kernels compute in (${
      v > max
        ? `above ${max.toPrecision(3)}, its ${
          path[0] === "perturb" ? "noise" : "step"
        } overflows to Inf`
        : `below ${F32_MIN_POSITIVE.toPrecision(2)}, it rounds to 0`
    }); use a value like ${o.typical}`,
  }];
}

/**
 * One check across keys (and, in the resolve phase, against the files and the model). It reads
 * the stages' typed implementations, so a custom stage of a kind gets the kind's checks too.
 */
interface CrossCheck {
  /** load: from the spec alone, when the file loads; resolve: once the stages have run. */
  phase: "load" | "resolve";
  check(s: CheckedStages, facts: ResolvedFacts): PipelineIssue[];
}

/**
 * Every check across keys, in one place: those that need no files run in
 * {@link loadPipelineText}, the rest in resolve.ts ({@link crossFieldIssues} with the facts).
 * Each issue names the key to edit, so the error points at its file:line:col.
 */
const CROSS_CHECKS: CrossCheck[] = [
  {
    phase: "load",
    check: ({ perturb, update }) => [
      ...f32RangeIssue(["perturb", "sigma"], perturb.sigma, { name: "σ", typical: "1e-3" }),
      ...(update !== undefined && typeof update.alpha === "number"
        ? f32RangeIssue(["update", "alpha"], update.alpha, { name: "α", typical: "5e-4" })
        : []),
      ...(update?.nes && update.alpha / perturb.sigma > F32_MAX
        ? [{
          path: ["update", "alpha"],
          message: `with nes: true the step is α/σ = ${
            update.alpha / perturb.sigma
          }, beyond f32; use a smaller alpha, a larger sigma, or nes: false`,
        }]
        : []),
    ],
  },
  {
    phase: "load",
    check: ({ dataset, fitness }) =>
      fitness.micro_batch > dataset.samplesPerIteration
        ? [{
          path: ["fitness", "micro_batch"],
          warning: true,
          message:
            `${fitness.micro_batch} is more than the ${dataset.samplesPerIteration} samples per ` +
            `iteration: every iteration is one micro-batch of ${dataset.samplesPerIteration}, and ` +
            `the activations are sized for ${fitness.micro_batch}; use micro_batch ≤ ${dataset.samplesPerIteration}`,
        }]
        : [],
  },
  {
    phase: "load",
    check: ({ perturb: p }) =>
      p.antithetic && p.population % 2 === 1
        ? [{
          path: ["perturb", "population"],
          message: `antithetic pairs ±ε need an even population, got ${p.population}; use ${
            p.population - 1
          } or ${p.population + 1}, or antithetic: false`,
        }]
        : [],
  },
  {
    phase: "load",
    check: ({ model, perturb }) =>
      model.storage === "bf16" && perturb.lowRank !== undefined
        ? [{
          path: ["model", "storage"],
          message:
            `bf16 storage needs full-rank perturbations (the low-rank forward reads θ's matrices ` +
            `directly); use storage: f32, or perturb type gaussian`,
        }]
        : [],
  },
  {
    phase: "load",
    check: ({ perturb }) =>
      perturb.groups.layers.flatMap((r, i) =>
        r.from > r.to
          ? [{
            path: ["perturb", "groups", "layers", i, "from"],
            message:
              `the range [from, to] is inclusive and needs from ≤ to, got from ${r.from} > to ${r.to}; swap them`,
          }]
          : []
      ),
  },
  {
    phase: "resolve",
    check: ({ dataset: ds }, { texts }) => {
      const n = texts.length;
      if (ds.holdout >= n) {
        return [{
          path: ["dataset", "holdout"],
          message:
            `holdout ${ds.holdout} leaves no samples to train on: the corpus has ${n}; use fewer than ${n}`,
        }];
      }
      const left = n - ds.holdout;
      if (ds.samplesPerIteration <= left) return [];
      return [{
        path: ["dataset", "samples_per_iteration"],
        message:
          `${ds.samplesPerIteration} samples per iteration, but only ${left} are left after the holdout ` +
          `(${n} samples, ${ds.holdout} held out); use at most ${left}`,
      }];
    },
  },
  {
    phase: "resolve",
    check: (_, { tokenizer, config }) =>
      tokenizer.vocabSize > config.vocabSize
        ? [{
          path: ["tokenizer", "type"],
          message:
            `the ${tokenizer.name} tokenizer has ${tokenizer.vocabSize} ids but the model's vocab_size is ` +
            `${config.vocabSize}; use a tokenizer that fits or a model with a larger vocabulary`,
        }]
        : [],
  },
  {
    phase: "resolve",
    check: ({ perturb }, { config }) =>
      perturb.groups.layers.flatMap((r, i) => {
        const end = (["from", "to"] as const).find((e) => r[e] >= config.numLayers);
        if (end === undefined) return [];
        return [{
          path: ["perturb", "groups", "layers", i, end],
          message: `layer ${r[end]} is beyond the model, which has ${config.numLayers} layers (0..${
            config.numLayers - 1
          }); use at most ${config.numLayers - 1}`,
        }];
      }),
  },
  {
    phase: "resolve",
    check: ({ perturb }, { config }) => {
      const rank = perturb.lowRank?.rank, max = maxLowRank(config);
      if (rank === undefined || rank <= max) return [];
      return [{
        path: ["perturb", "rank"],
        message: `rank ${rank} exceeds min(out, in) = ${max} of the model's smallest matrix; ` +
          `use a rank from 1 to ${max}`,
      }];
    },
  },
  {
    phase: "resolve",
    check: ({ fitness }, { config }) =>
      fitness.max_len > config.maxPositionEmbeddings
        ? [{
          path: ["fitness", "max_len"],
          message:
            `${fitness.max_len} tokens exceed the model's max_position_embeddings ${config.maxPositionEmbeddings}; ` +
            `use at most ${config.maxPositionEmbeddings}`,
        }]
        : [],
  },
];

/**
 * The faults across keys of a validated spec: without `facts`, the checks that need no files
 * (run when the pipeline loads); with them, the checks against the corpus, the tokenizer and the
 * model (run by resolve.ts once the stages have read them).
 */
export function crossFieldIssues(spec: PipelineSpec, facts?: ResolvedFacts): PipelineIssue[] {
  const stages: CheckedStages = {
    dataset: createStage(spec, "dataset"),
    model: createStage(spec, "model"),
    perturb: createStage(spec, "perturb"),
    update: createStage(spec, "update"),
    fitness: fitnessBatching(spec.fitness),
  };
  const phase = facts ? "resolve" : "load";
  return CROSS_CHECKS.filter((c) => c.phase === phase).flatMap((c) =>
    c.check(stages, facts as ResolvedFacts)
  );
}

/** Replaces the YAML's settings with the command line's, validated like the YAML. */
function applyOverrides(
  spec: PipelineSpec,
  o: PipelineOverrides,
  schema: ReturnType<typeof pipelineSchema>,
) {
  if (o.iterations !== undefined) {
    if (!schema.shape.iterations.safeParse(o.iterations).success) {
      throw new UserError(
        `--iterations must be a positive integer (the total), got ${o.iterations}`,
      );
    }
    spec.iterations = o.iterations;
  }
  if (o.backend !== undefined) spec.backend = o.backend;
  if (o.seed !== undefined) {
    if (!schema.shape.seed.safeParse(o.seed).success) {
      throw new UserError(
        `--seed must be an integer from 0 to ${Number.MAX_SAFE_INTEGER}, got ${o.seed}`,
      );
    }
    spec.seed = o.seed;
  }
  if (o.out !== undefined) {
    if (typeof o.out !== "string" || o.out.trim() === "") {
      throw new UserError(`--out must name a directory, got ${JSON.stringify(o.out)}`);
    }
    spec.output.dir = o.out;
  }
}
