/**
 * Resolving a loaded pipeline: run each stage's implementation from the registry (read the
 * corpus, build the tokenizer, resolve the model's config and initial weights), then the checks
 * across keys that need the files and the model (load.ts {@link crossFieldIssues}: a held-out
 * split or subset larger than the corpus, max_len beyond the model's positions, a tokenizer
 * larger than the model's vocabulary, layer ranges or a rank beyond the model). Each fault is a
 * one-line {@link UserError} `file:line:col: path: message` at the key to edit. Nothing is
 * written to disk.
 *
 * @module
 */
import { join, resolve as absolute } from "node:path";
import type { Qwen3Config } from "../model/config.ts";
import type { TensorStream } from "../model/safetensors.ts";
import type { Tokenizer } from "../tokenizers/mod.ts";
import { createStage, type PipelineSpec, type StageImpls, type StageKind } from "./spec.ts";
import { UserError } from "../errors.ts";
import { crossFieldIssues, type KeyPath, type LoadedPipeline, type PipelineIssue } from "./load.ts";
import type { StageContext } from "./stages/types.ts";
import "./stages/mod.ts";

/** A pipeline with its data, tokenizer and model in hand, ready to compile. */
export interface ResolvedPipeline {
  /** The validated pipeline it was resolved from. */
  loaded: LoadedPipeline;
  /** Same object as loaded.spec. */
  spec: PipelineSpec;
  /** The model's architecture. */
  config: Qwen3Config;
  /** The tokenizer stage's tokenizer. */
  tokenizer: Tokenizer;
  /** Every sample of the corpus (after max_lines), held-out ones included, in file order. */
  texts: string[];
  /** The initial weights. */
  model: {
    /** Where the initial weights come from, in words ("random init (seed 1234)" or a directory). */
    source: string;
    /** A fresh stream of the initial weights each call. */
    tensors: () => TensorStream;
  };
  /** output.dir, or runs/<name>; relative paths are relative to the working directory. */
  outDir: string;
  /**
   * Likely mistakes that still run (load.ts's and the stages': a micro_batch above the samples,
   * a corpus with invalid UTF-8), one line each with the place and the fix.
   */
  warnings: string[];
}

/**
 * Runs the stages' load/create/resolve and the cross-stage checks. Throws a one-line
 * {@link UserError} at the first fault. `texts` are the samples already in hand (a distributed
 * worker's, from Redis: pipeline/distributed_bootstrap.ts); the dataset stage is then not run.
 */
export async function resolvePipeline(
  loaded: LoadedPipeline,
  o: { texts?: string[] } = {},
): Promise<ResolvedPipeline> {
  const { spec } = loaded;
  const warnings = [...(loaded.warnings ?? [])];
  const ctx: StageContext = {
    baseDir: loaded.baseDir,
    file: loaded.file,
    seed: spec.seed,
    where: loaded.where,
    warn: (message) => warnings.push(message),
  };

  // Stages run in document order, so the first fault thrown is the first in the file.
  const texts = o.texts ?? await runStage(loaded, "dataset", (dataset) => dataset.load(ctx));
  const tokenizer = await runStage(loaded, "tokenizer", (t) => t.create(ctx));
  const model = await runStage(loaded, "model", (m) => m.resolve(ctx));
  const { config } = model;

  const issues = crossFieldIssues(spec, { texts, tokenizer, config });
  const errors = issues.filter((i) => !i.warning);
  if (errors.length > 0) throw issuesError(loaded, errors);
  for (const i of issues.filter((i) => i.warning)) {
    warnings.push(`${loaded.where(i.path)}: ${(i.at ?? i.path).join(".")}: ${i.message}`);
  }

  return {
    loaded,
    spec,
    config,
    tokenizer,
    texts,
    model: { source: model.source, tensors: model.tensors },
    outDir: spec.output.dir ?? join("runs", spec.name),
    warnings,
  };
}

/**
 * Calls a stage's implementation. A UserError it throws without a place in the pipeline (a
 * tokenizer or config loader names only its own file) gets one: the setting whose value the
 * message mentions, else the stage itself.
 */
async function runStage<K extends StageKind, T>(
  loaded: LoadedPipeline,
  kind: K,
  call: (impl: StageImpls[K]) => Promise<T>,
): Promise<T> {
  try {
    return await call(createStage(loaded.spec, kind));
  } catch (e) {
    if (!(e instanceof UserError) || e.message.startsWith(`${loaded.file}:`)) throw e;
    const path = settingMentioned(loaded, kind, e.message);
    throw new UserError(`${loaded.where(path)}: ${path.join(".")}: ${e.message}`);
  }
}

function settingMentioned(loaded: LoadedPipeline, kind: StageKind, message: string): KeyPath {
  for (const [key, value] of Object.entries(loaded.spec[kind])) {
    if (key === "type" || typeof value !== "string" || value === "") continue;
    if (message.includes(value) || message.includes(absolute(loaded.baseDir, value))) {
      return [kind, key];
    }
  }
  return [kind];
}

/** One error for the first issue in document order, counting the rest. */
function issuesError(loaded: LoadedPipeline, issues: PipelineIssue[]): UserError {
  const placed = issues.map((issue) => {
    const where = loaded.where(issue.path);
    const m = /:(\d+):(\d+)$/.exec(where);
    return { issue, where, line: Number(m?.[1] ?? 0), col: Number(m?.[2] ?? 0) };
  });
  placed.sort((a, b) => a.line - b.line || a.col - b.col);
  const { issue, where } = placed[0];
  const rest = placed.length - 1;
  return new UserError(
    `${where}: ${(issue.at ?? issue.path).join(".")}: ${issue.message}${
      rest > 0 ? ` (+${rest} more)` : ""
    }`,
  );
}
