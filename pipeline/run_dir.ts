/**
 * The run directory: what `deno task train` writes under `--out`, how it is read back, and the
 * checks a resume makes before it continues anything.
 *
 * ```
 * runs/NAME/
 *   run.json                 the run's identity (pipeline and data digests, backend), written
 *                            before the first iteration
 *   metrics.jsonl            one line per iteration (fsynced; a torn last line is skipped)
 *   checkpoints/iter-N/      θ_N: config.json, model.safetensors, state.json
 *   final/                   θ of the last iteration, the same three files
 * ```
 *
 * Every file and checkpoint appears atomically (written to `.NAME.PID-TAG.tmp`, fsynced,
 * renamed). A process killed mid-write leaves such a temp, or an old checkpoint moved aside as
 * `.NAME.PID-TAG.old`; {@link cleanRunDir} puts the old one back when the new one never
 * arrived and removes the rest, at the next start or resume.
 *
 * state.json ({@link RunState}) is sealed: it carries the digests of the pipeline, of the
 * tokenized data and of θ (kernels/checksum.ts), and a digest of itself, so a resume notices
 * an edited or damaged state, another corpus, another pipeline or other weights, and says
 * which ({@link verifyResume}).
 *
 * @module
 */
import { resolve } from "node:path";
import { parentDir, syncDir } from "../model/safetensors.ts";
import { writeTextAtomic } from "../model/safetensors_index.ts";
import type { PipelineSpec } from "./spec.ts";
import { UserError } from "../errors.ts";

/** The state.json format this esflow writes. */
export const RUN_STATE_FORMAT = "esflow-run-state/2";
/** The run.json format this esflow writes. */
export const RUN_MANIFEST_FORMAT = "esflow-run/1";

/**
 * One line of metrics.jsonl. The step's diagnostics come from the strategy's `tell`
 * (pipeline/strategy.ts StepDiagnostics has their formulas); they are absent from lines written
 * before they existed.
 */
export interface MetricsLine {
  /** t, from 0. */
  iter: number;
  /** Mean of the members' fitness F_j. */
  fitness_mean: number;
  /** Largest F_j. */
  fitness_max: number;
  /** Smallest F_j. */
  fitness_min: number;
  /** Held-out mean negative log-likelihood per token of θ_t (before iteration t's update). */
  eval_loss?: number;
  /** σ_t. */
  sigma: number;
  /** α_t. */
  alpha: number;
  /** Wall seconds of the iteration. */
  seconds: number;
  /** Population × scored tokens per second over the whole iteration. */
  tokens_per_s: number;
  /** Population standard deviation (1/N) of the raw fitness. */
  fitness_std?: number;
  /** fitness_max − fitness_min. */
  fitness_spread?: number;
  /** sqrt(E‖Δθ‖²) of the update over the noise: expected, not measured. */
  update_norm_expected?: number;
  /** update_norm_expected / ‖θ_t‖ (‖θ_t‖ measured on the device, kernels/sum_squares.ts). */
  update_ratio_expected?: number;
  /** Antithetic pairs (K ≥ 2): sqrt(Σ odd² / Σ even²) of the pairs' fitness. */
  pair_snr?: number;
}

/** The pipeline as a run records it: the spec minus the keys a resume may change. */
export type PipelineKey = Omit<PipelineSpec, "iterations" | "output" | "backend">;

/** The run state saved in state.json: enough, with the pipeline, to continue exactly. */
export interface RunState {
  /** {@link RUN_STATE_FORMAT}; "esflow-run-state/1" from an esflow that did not seal it. */
  format: string;
  /** Iterations completed: θ in this checkpoint is θ_iteration. */
  iteration: number;
  /** Total iterations the run was asked for when this was written. */
  iterations: number;
  seed: number;
  /** σ and α of the next iteration (pure functions of the iteration; recorded for readers). */
  sigma: number;
  alpha: number;
  /**
   * The data: the split sizes, the per-iteration subset size, all from the seed, and the
   * SHA-256 of the tokenized samples ({@link dataDigest}).
   */
  data: {
    samples: number;
    train: number;
    holdout: number;
    samples_per_iteration: number;
    digest?: string;
  };
  /** The pipeline that produced it, minus the keys a resume may change. */
  pipeline: PipelineKey;
  /** SHA-256 of the pipeline key ({@link pipelineDigest}). */
  pipeline_digest?: string;
  /** θ's WeightsChecksum (kernels/checksum.ts) as it was written. */
  theta_checksum?: string;
  /** The backend (webgpu, cpu) and device that ran it. */
  backend?: string;
  adapter: string;
  /** SHA-256 of every other field ({@link sealState}): an edit or a torn copy shows. */
  state_digest?: string;
}

/** run.json: what a run is, written once before its first iteration. */
export interface RunManifest {
  format: string;
  name: string;
  seed: number;
  pipeline: PipelineKey;
  pipeline_digest: string;
  data_digest: string;
  backend: string;
  adapter: string;
  /**
   * The pipeline file (absolute) and its YAML text as the run started from them, so `--resume
   * DIR` continues with the same pipeline without naming it (absent in runs of older esflows).
   */
  pipeline_file?: string;
  pipeline_text?: string;
}

// ---- digests --------------------------------------------------------------------------------

/** JSON with every object's keys sorted, so equal values give equal text. */
export function stableJson(v: unknown): string {
  return JSON.stringify(
    v,
    (_k, x) =>
      x && typeof x === "object" && !Array.isArray(x)
        ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => a.localeCompare(b)))
        : x,
  );
}

/** Lowercase hex SHA-256 of bytes or of a string's UTF-8. */
export async function sha256Hex(data: string | Uint8Array): Promise<string> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const d = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The spec minus the keys a resume may change (the length, the output, the backend). */
export function pipelineKey(spec: PipelineSpec): PipelineKey {
  const { iterations: _i, output: _o, backend: _b, ...rest } = spec;
  return rest;
}

/** SHA-256 of a pipeline key's stable JSON. */
export function pipelineDigest(key: PipelineKey): Promise<string> {
  return sha256Hex(stableJson(key));
}

/**
 * SHA-256 of the tokenized samples a run trains and evaluates on: each sample as its length
 * then its ids, u32 little-endian. Another corpus, another max_lines or another tokenizer gives
 * another digest.
 */
export function dataDigest(tokens: readonly (readonly number[])[]): Promise<string> {
  const n = tokens.reduce((a, t) => a + t.length + 1, 0);
  const words = new Uint32Array(n);
  let at = 0;
  for (const t of tokens) {
    words[at++] = t.length;
    words.set(t, at);
    at += t.length;
  }
  return sha256Hex(new Uint8Array(words.buffer));
}

/** The state with its {@link RunState.state_digest} set over every other field. */
export async function sealState(state: RunState): Promise<RunState> {
  const { state_digest: _d, ...rest } = state;
  return { ...rest, state_digest: await sha256Hex(stableJson(rest)) };
}

/** Whether a state's digest matches its fields. */
async function sealHolds(state: RunState): Promise<boolean> {
  if (typeof state.state_digest !== "string") return false;
  return (await sealState(state)).state_digest === state.state_digest;
}

/**
 * The first place two JSON values differ, as "key.path: old → new" (a key missing on one side
 * shows as "absent"); null when they are equal.
 */
export function firstDifference(was: unknown, now: unknown, path: string[] = []): string | null {
  const show = (v: unknown) => v === undefined ? "absent" : JSON.stringify(v);
  const isObj = (v: unknown) => v !== null && typeof v === "object" && !Array.isArray(v);
  if (isObj(was) && isObj(now)) {
    const a = was as Record<string, unknown>, b = now as Record<string, unknown>;
    for (const k of [...new Set([...Object.keys(a), ...Object.keys(b)])].sort()) {
      const d = firstDifference(a[k], b[k], [...path, k]);
      if (d) return d;
    }
    return null;
  }
  if (stableJson(was) === stableJson(now)) return null;
  return `${path.join(".") || "(the whole pipeline)"}: ${show(was)} → ${show(now)}`;
}

// ---- checkpoints ----------------------------------------------------------------------------

/** A checkpoint of a run dir and its state. */
export interface CheckpointRef {
  dir: string;
  state: RunState;
}

/** The complete checkpoint dirs of a run: final/ and checkpoints/iter-N, those that exist. */
async function checkpointDirs(outDir: string): Promise<string[]> {
  const dirs: string[] = [];
  if (await isDir(`${outDir}/final`)) dirs.push(`${outDir}/final`);
  try {
    for await (const e of Deno.readDir(`${outDir}/checkpoints`)) {
      if (e.isDirectory && /^iter-\d+$/.test(e.name)) dirs.push(`${outDir}/checkpoints/${e.name}`);
    }
  } catch { /* no checkpoints yet */ }
  return dirs;
}

/** Reads a checkpoint's state.json; a fault is a one-line reason, not an exception. */
async function readState(dir: string): Promise<RunState | { fault: string }> {
  let text: string;
  try {
    text = await Deno.readTextFile(`${dir}/state.json`);
  } catch (e) {
    return {
      fault: e instanceof Deno.errors.NotFound ? "is missing" : `cannot be read (${firstLine(e)})`,
    };
  }
  try {
    const s = JSON.parse(text);
    if (!s || typeof s !== "object" || !Number.isSafeInteger(s.iteration)) {
      return { fault: "has no iteration count" };
    }
    return s as RunState;
  } catch {
    return { fault: `is not valid JSON (${text.length} bytes; cut short or overwritten?)` };
  }
}

/**
 * The latest checkpoint of a run dir: final/ or checkpoints/iter-N with the most iterations.
 * Checkpoint dirs appear whole (they are renamed into place), so one whose state.json does not
 * parse was damaged after it was written: readers (serve, plot, a worker's bootstrap) skip it;
 * with `strict` (a resume) it is a {@link UserError} naming the file, never a silent fall back to
 * an older checkpoint.
 */
export async function latestCheckpoint(
  outDir: string,
  options: { strict?: boolean } = {},
): Promise<CheckpointRef | null> {
  let best: CheckpointRef | null = null;
  for (const dir of await checkpointDirs(outDir)) {
    const state = await readState(dir);
    if ("fault" in state) {
      if (!options.strict) continue;
      throw new UserError(
        `${dir}/state.json ${state.fault}: the checkpoint is damaged; restore it, or delete ${dir} ` +
          `to resume from an earlier checkpoint`,
      );
    }
    if (!best || state.iteration > best.state.iteration) best = { dir, state };
  }
  return best;
}

/** What a resume must continue: this process's pipeline, data and device. */
export interface ResumeTarget {
  key: PipelineKey;
  pipelineDigest: string;
  dataDigest: string;
  /** The data's split sizes, as state.json records them. */
  data: Omit<RunState["data"], "digest">;
  backend: string;
  adapter: string;
  /** Total iterations asked for now (--iterations or the pipeline). */
  iterations: number;
  /** Resume on another backend anyway (`--allow-backend-change`). */
  allowBackendChange?: boolean;
  /** Where the corpus is named, for messages ("file:line:col" of dataset.path). */
  dataWhere?: string;
}

/**
 * Checks that a checkpoint can be continued by `target` with the same trajectory, and throws a
 * one-line {@link UserError} saying what differs: a state.json from an older esflow or edited,
 * a checkpoint whose iteration is not its name's, another pipeline (the key that changed),
 * other data, another backend (unless allowed), or fewer iterations than it already holds.
 * Returns a note when only the device differs within the backend. θ's checksum is checked by
 * the caller once the weights are on the device ({@link checkThetaChecksum}).
 */
export async function verifyResume(
  ck: CheckpointRef,
  target: ResumeTarget,
): Promise<{ note?: string }> {
  const { dir, state } = ck;
  const file = `${dir}/state.json`;
  if (state.format !== RUN_STATE_FORMAT) {
    throw new UserError(
      `${file}: format ${JSON.stringify(state.format)} is not ${RUN_STATE_FORMAT}; ` +
        `this esflow cannot verify it, so it will not resume it: start a new run`,
    );
  }
  if (!(await sealHolds(state))) {
    throw new UserError(
      `${file}: its digest does not match its contents (edited or damaged); restore it, or ` +
        `delete ${dir} to resume from an earlier checkpoint`,
    );
  }
  const name = /\/(final|iter-(\d+))$/.exec(dir);
  const own = name?.[2] !== undefined ? Number(name[2]) : state.iterations;
  if (state.iteration !== own) {
    throw new UserError(
      `${file}: says iteration ${state.iteration}, but ${dir} holds iteration ${own}; ` +
        `the checkpoint was moved or edited: restore it`,
    );
  }
  const changed = firstDifference(state.pipeline, target.key);
  if (changed || state.pipeline_digest !== target.pipelineDigest) {
    throw new UserError(
      `${file}: the pipeline changed since this run (${changed ?? "its digest differs"}); ` +
        `resume with the pipeline that made it, or start a new run with --out`,
    );
  }
  if (state.data.digest !== target.dataDigest) {
    const sizes = ["samples", "train", "holdout", "samples_per_iteration"] as const;
    const size = sizes.find((k) => state.data[k] !== target.data[k]);
    throw new UserError(
      `${target.dataWhere ? `${target.dataWhere}: ` : ""}the data changed since this run ` +
        `(${
          size
            ? `${size} ${state.data[size]} → ${target.data[size]}`
            : "the tokenized samples' digest differs"
        }; recorded in ${file}); restore the corpus the run trained on, or start a new run`,
    );
  }
  const backend = state.backend ?? "webgpu";
  if (backend !== target.backend && !target.allowBackendChange) {
    throw new UserError(
      `${file}: this run trained on the ${backend} backend (${state.adapter}); resuming on ` +
        `${target.backend} would change its trajectory (backends agree to ~1e-5, not bit for bit): ` +
        `resume with --backend ${backend}, or pass --allow-backend-change to continue on ${target.backend}`,
    );
  }
  if (state.iteration > target.iterations) {
    throw new UserError(
      `${dir} holds iteration ${state.iteration}, past --iterations ${target.iterations} ` +
        `(the total, not the number to add); give --iterations ${state.iteration} or more`,
    );
  }
  if (backend === target.backend && state.adapter !== target.adapter) {
    return {
      note: `resuming on ${target.adapter}; ${dir} was written on ${state.adapter} ` +
        `(the same backend on another device may differ in the last bits)`,
    };
  }
  return {};
}

/** Throws a {@link UserError} unless θ on the device has the checksum the state recorded. */
export function checkThetaChecksum(ck: CheckpointRef, actual: string): void {
  if (ck.state.theta_checksum === actual) return;
  throw new UserError(
    `${ck.dir}/model.safetensors: θ's checksum is ${actual}, but state.json recorded ` +
      `${ck.state.theta_checksum ?? "none"}: the weights are not the ones this checkpoint wrote ` +
      `(damaged or replaced); restore them, or delete ${ck.dir} to resume from an earlier checkpoint`,
  );
}

// ---- run.json -------------------------------------------------------------------------------

/** Reads run.json; null when there is none. A damaged one is a {@link UserError}. */
export async function readManifest(outDir: string): Promise<RunManifest | null> {
  const file = `${outDir}/run.json`;
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new UserError(`${file}: cannot be read (${firstLine(e)})`);
  }
  try {
    const m = JSON.parse(text);
    if (m?.format !== RUN_MANIFEST_FORMAT) throw new Error("format");
    return m as RunManifest;
  } catch {
    throw new UserError(
      `${file}: not a ${RUN_MANIFEST_FORMAT} file (edited or damaged); restore it, or start a new run`,
    );
  }
}

/**
 * Checks a run with no checkpoint yet against its run.json before it starts over from
 * iteration 0: the same pipeline, data and backend, or a one-line {@link UserError}.
 */
export function verifyManifest(outDir: string, m: RunManifest, target: ResumeTarget): void {
  const file = `${outDir}/run.json`;
  const changed = firstDifference(m.pipeline, target.key);
  if (changed || m.pipeline_digest !== target.pipelineDigest) {
    throw new UserError(
      `${file}: the pipeline changed since this run (${changed ?? "its digest differs"}); ` +
        `resume with the pipeline that made it, or start a new run with --out`,
    );
  }
  if (m.data_digest !== target.dataDigest) {
    throw new UserError(
      `${target.dataWhere ? `${target.dataWhere}: ` : ""}the data changed since this run ` +
        `(recorded in ${file}); restore the corpus the run trained on, or start a new run`,
    );
  }
  if (m.backend !== target.backend && !target.allowBackendChange) {
    throw new UserError(
      `${file}: this run trained on the ${m.backend} backend (${m.adapter}); resuming on ` +
        `${target.backend} would change its trajectory (backends agree to ~1e-5, not bit for bit): ` +
        `resume with --backend ${m.backend}, or pass --allow-backend-change`,
    );
  }
}

/** run.json's record of the pipeline file and text, when the run knows them. */
export function manifestPipeline(
  loaded?: { file?: string; text?: string },
): Pick<RunManifest, "pipeline_file" | "pipeline_text"> {
  if (loaded?.file === undefined || loaded.text === undefined) return {};
  return { pipeline_file: resolve(loaded.file), pipeline_text: loaded.text };
}

/**
 * What a run dir says about the run it holds, for `--resume DIR`: its seed, and the pipeline
 * file and text it started from (run.json; a run of an older esflow records no text). The seed
 * comes from run.json, else the latest checkpoint's state.json; null when the dir holds
 * neither (the resume itself then says there is nothing to continue).
 */
export async function recordedRun(
  outDir: string,
): Promise<{ seed: number; from: string; pipeline?: { file: string; text: string } } | null> {
  const dir = outDir.replace(/\/+$/, "");
  const info = await Deno.stat(dir).catch(() => null);
  if (info && !info.isDirectory) {
    throw new UserError(
      `--resume ${dir}: ${dir} is a file, not a run dir; give the run's directory`,
    );
  }
  const m = await readManifest(dir);
  if (m) {
    return {
      seed: m.seed,
      from: `${dir}/run.json`,
      ...(m.pipeline_file !== undefined && m.pipeline_text !== undefined
        ? { pipeline: { file: m.pipeline_file, text: m.pipeline_text } }
        : {}),
    };
  }
  const latest = await latestCheckpoint(dir);
  return latest ? { seed: latest.state.seed, from: `${latest.dir}/state.json` } : null;
}

/** Writes run.json atomically. */
export async function writeManifest(outDir: string, m: RunManifest): Promise<void> {
  await writeTextAtomic(`${outDir}/run.json`, JSON.stringify(m, null, 2) + "\n");
}

// ---- metrics.jsonl --------------------------------------------------------------------------

/** Parses metrics.jsonl; a torn line (a crash mid-write) is skipped. */
export function parseMetrics(text: string): MetricsLine[] {
  const out: MetricsLine[] = [];
  for (const raw of text.split("\n")) {
    if (!raw.trim()) continue;
    try {
      const l = JSON.parse(raw);
      if (typeof l?.iter === "number") out.push(l as MetricsLine);
    } catch { /* an incomplete line */ }
  }
  return out;
}

/** Appends a line to metrics.jsonl (fsynced: a crash loses at most the line being written). */
export async function appendMetrics(path: string, line: MetricsLine): Promise<void> {
  const f = await Deno.open(path, { append: true, create: true });
  try {
    const bytes = new TextEncoder().encode(JSON.stringify(line) + "\n");
    let done = 0;
    while (done < bytes.length) done += await f.write(bytes.subarray(done));
    await f.sync();
  } finally {
    f.close();
  }
}

/** Keeps the metrics lines of iterations before `iteration` (a resume rewrites the rest). */
export async function truncateMetrics(path: string, iteration: number): Promise<void> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch {
    return;
  }
  // A line cut short by a crash does not parse: it belongs to an iteration that is rerun.
  const kept = text.split("\n").filter((l) => {
    try {
      return l.trim() !== "" && JSON.parse(l).iter < iteration;
    } catch {
      return false;
    }
  });
  const next = kept.map((l) => l + "\n").join("");
  if (next !== text) await writeTextAtomic(path, next);
}

// ---- the directory itself -------------------------------------------------------------------

/** Whether anything exists at `path`. */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

async function isDir(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false;
  }
}

/** Whether a run dir holds a run: its run.json, metrics or a checkpoint. */
export async function holdsRun(outDir: string): Promise<boolean> {
  for (const f of ["run.json", "metrics.jsonl", "final"]) {
    if (await exists(`${outDir}/${f}`)) return true;
  }
  return (await checkpointDirs(outDir)).length > 0;
}

function firstLine(e: unknown): string {
  return String((e as Error)?.message ?? e).split("\n")[0];
}

/** The OS error code of a file-system error (ENOSPC, EACCES, …), if it has one. */
export function errorCode(e: unknown): string | undefined {
  const code = (e as { code?: unknown })?.code;
  return typeof code === "string" ? code : undefined;
}

/** Whether `e` is a full disk or an exceeded quota. */
export function isDiskFull(e: unknown): boolean {
  const c = errorCode(e);
  return c === "ENOSPC" || c === "EDQUOT" || /No space left on device/.test(firstLine(e));
}

/**
 * A file-system failure on the run dir as a one-line {@link UserError} with the fix, or null when
 * it is not one the user can fix (a bug: rethrow it).
 */
export function runDirError(e: unknown, path: string): UserError | null {
  if (e instanceof UserError) return e;
  const why = firstLine(e).replace(/ \(os error \d+\).*$/, "");
  if (isDiskFull(e)) {
    return new UserError(`${path}: the disk is full (${why}); free space and run again`);
  }
  if (
    e instanceof Deno.errors.PermissionDenied || e instanceof Deno.errors.NotCapable ||
    ["EACCES", "EPERM", "EROFS"].includes(errorCode(e) ?? "")
  ) {
    return new UserError(`${path}: cannot write there (${why}); choose a writable --out DIR`);
  }
  if (e instanceof Deno.errors.NotADirectory || errorCode(e) === "ENOTDIR") {
    return new UserError(
      `${path}: a parent of it is a file, not a directory; choose another --out DIR`,
    );
  }
  if (e instanceof Deno.errors.AlreadyExists || errorCode(e) === "EEXIST") {
    return new UserError(`${path}: exists and is not a directory; choose another --out DIR`);
  }
  return null;
}

/**
 * Checks that `outDir` can be a run dir without creating it: not a file, not under a file, and
 * (when it exists) a directory. Throws a one-line {@link UserError} with the fix.
 */
export async function checkOutDir(outDir: string): Promise<void> {
  let at = outDir.replace(/\/+$/, "") || "/";
  for (;;) {
    let info: Deno.FileInfo | null = null;
    try {
      info = await Deno.stat(at);
    } catch (e) {
      if (e instanceof Deno.errors.NotADirectory || errorCode(e) === "ENOTDIR") {
        // Some ancestor is a file: keep climbing to name it.
      } else if (!(e instanceof Deno.errors.NotFound)) {
        throw runDirError(e, outDir) ?? e;
      }
    }
    if (info) {
      if (info.isDirectory) return;
      throw new UserError(
        at === outDir.replace(/\/+$/, "")
          ? `output dir ${outDir} is a file, not a directory; choose another --out DIR`
          : `output dir ${outDir}: ${at} is a file, so nothing can be created under it; choose another --out DIR`,
      );
    }
    const up = parentDir(at);
    if (up === at) return;
    at = up;
  }
}

/** Creates the run dir (and its parents); failures are one-line {@link UserError}s. */
export async function makeRunDir(outDir: string): Promise<void> {
  try {
    await Deno.mkdir(outDir, { recursive: true });
  } catch (e) {
    throw runDirError(e, outDir) ?? e;
  }
}

/** A temp or set-aside name that an atomic write leaves when its process dies. */
const LEFTOVER = /^\.(.+)\.\d+-[0-9a-f]+\.(tmp|old)$/;

/**
 * Cleans what a killed process left in a run dir (the dir and checkpoints/): an old checkpoint
 * moved aside whose replacement never arrived is put back under its name (it is complete: it was
 * renamed whole), then every other `.NAME.PID-TAG.tmp` and `.old` is removed. Returns the names
 * it put back and removed, for a note. Run it only while no other process writes the dir.
 */
export async function cleanRunDir(
  outDir: string,
): Promise<{ restored: string[]; removed: string[] }> {
  const restored: string[] = [], removed: string[] = [];
  for (const dir of [outDir, `${outDir}/checkpoints`]) {
    let names: string[];
    try {
      names = [];
      for await (const e of Deno.readDir(dir)) names.push(e.name);
    } catch {
      continue;
    }
    names.sort();
    for (const name of names) {
      const m = LEFTOVER.exec(name);
      if (!m || m[2] !== "old") continue;
      const target = `${dir}/${m[1]}`;
      if (await exists(target)) continue;
      await Deno.rename(`${dir}/${name}`, target);
      restored.push(target);
    }
    for (const name of names) {
      if (!LEFTOVER.test(name)) continue;
      const path = `${dir}/${name}`;
      if (!(await exists(path))) continue;
      await Deno.remove(path, { recursive: true });
      removed.push(path);
    }
    if (restored.length + removed.length > 0) await syncDir(dir);
  }
  return { restored, removed };
}
