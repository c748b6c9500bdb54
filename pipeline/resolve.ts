/**
 * Resolving a loaded pipeline: run each stage's implementation from the registry (read the
 * corpus, build the tokenizer, resolve the model's config and initial weights) and check what
 * only the files and the model can tell: a missing or empty corpus, a held-out split or subset
 * larger than the corpus, max_len beyond the model's positions, a tokenizer larger than the
 * model's vocabulary, layer ranges beyond the model. Each fault is a one-line {@link UserError}
 * `file:line:col: path: message` at the key to edit. Nothing is written to disk.
 *
 * @module
 */
import { join, resolve as absolute } from "node:path";
import type { Qwen3Config } from "../model/config.ts";
import type { TensorStream } from "../model/safetensors.ts";
import type { Tokenizer } from "../tokenizers/mod.ts";
import { type PipelineSpec, type StageKind, stageType } from "./spec.ts";
import { UserError } from "./errors.ts";
import type { KeyPath, LoadedPipeline, PipelineIssue } from "./load.ts";
import type {
  DatasetImpl,
  ModelImpl,
  PerturbImpl,
  StageContext,
  TokenizerImpl,
} from "./stages/types.ts";
import "./stages/mod.ts";

/** A pipeline with its data, tokenizer and model in hand, ready to compile. */
export interface ResolvedPipeline {
  loaded: LoadedPipeline;
  /** Same object as loaded.spec. */
  spec: PipelineSpec;
  /** The model's architecture. */
  config: Qwen3Config;
  tokenizer: Tokenizer;
  /** Every sample of the corpus (after max_lines), held-out ones included, in file order. */
  texts: string[];
  model: {
    /** Where the initial weights come from, in words ("random init (seed 1234)" or a directory). */
    source: string;
    /** A fresh stream of the initial weights each call. */
    tensors: () => TensorStream;
  };
  /** output.dir, or runs/<name>; relative paths are relative to the working directory. */
  outDir: string;
}

/**
 * Runs the stages' load/create/resolve and the cross-stage checks. Throws a one-line
 * {@link UserError} at the first fault.
 */
export async function resolvePipeline(loaded: LoadedPipeline): Promise<ResolvedPipeline> {
  const { spec } = loaded;
  const ctx: StageContext = {
    baseDir: loaded.baseDir,
    file: loaded.file,
    seed: spec.seed,
    where: loaded.where,
  };

  // Stages run in document order, so the first fault thrown is the first in the file.
  const texts = await runStage(
    loaded,
    "dataset",
    (impl: DatasetImpl) => impl.load(spec.dataset, ctx),
  );
  const tokenizer = await runStage(
    loaded,
    "tokenizer",
    (impl: TokenizerImpl) => impl.create(spec.tokenizer, ctx),
  );
  const model = await runStage(loaded, "model", (impl: ModelImpl) => impl.resolve(spec.model, ctx));
  const { config } = model;

  const issues = crossIssues(spec, { texts, tokenizer, config });
  if (issues.length > 0) throw issuesError(loaded, issues);

  return {
    loaded,
    spec,
    config,
    tokenizer,
    texts,
    model: { source: model.source, tensors: model.tensors },
    outDir: spec.output.dir ?? join("runs", spec.name),
  };
}

/**
 * Calls a stage's implementation. A UserError it throws without a place in the pipeline (a
 * tokenizer or config loader names only its own file) gets one: the setting whose value the
 * message mentions, else the stage itself.
 */
async function runStage<Impl, T>(
  loaded: LoadedPipeline,
  kind: StageKind,
  call: (impl: Impl) => Promise<T>,
): Promise<T> {
  const settings = loaded.spec[kind];
  const type = stageType(kind, settings.type);
  // Validation only admits registered types, so this is a programming error, not the user's.
  if (!type) throw new Error(`${kind} stage type ${settings.type} is not registered`);
  try {
    return await call(type.impl as Impl);
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

/** Checks that need the corpus, the tokenizer and the model together. */
function crossIssues(
  spec: PipelineSpec,
  o: { texts: string[]; tokenizer: Tokenizer; config: Qwen3Config },
): PipelineIssue[] {
  const issues: PipelineIssue[] = [];
  const { config } = o;
  const ds = spec.dataset;
  const n = o.texts.length;
  if (typeof ds.holdout === "number" && ds.holdout >= n) {
    issues.push({
      path: ["dataset", "holdout"],
      message:
        `holdout ${ds.holdout} leaves no samples to train on: the corpus has ${n}; use fewer than ${n}`,
    });
  } else if (typeof ds.samples_per_iteration === "number") {
    const left = n - (typeof ds.holdout === "number" ? ds.holdout : 0);
    if (ds.samples_per_iteration > left) {
      issues.push({
        path: ["dataset", "samples_per_iteration"],
        message:
          `${ds.samples_per_iteration} samples per iteration, but only ${left} are left after the holdout ` +
          `(${n} samples, ${ds.holdout ?? 0} held out); use at most ${left}`,
      });
    }
  }

  if (o.tokenizer.vocabSize > config.vocabSize) {
    issues.push({
      path: ["tokenizer", "type"],
      message:
        `the ${o.tokenizer.name} tokenizer has ${o.tokenizer.vocabSize} ids but the model's vocab_size is ` +
        `${config.vocabSize}; use a tokenizer that fits or a model with a larger vocabulary`,
    });
  }

  const layers = (spec.perturb.groups as { layers?: unknown } | undefined)?.layers;
  if (Array.isArray(layers)) {
    layers.forEach((r: { from?: unknown; to?: unknown }, i) => {
      for (const end of ["from", "to"] as const) {
        const v = r[end];
        if (typeof v === "number" && v >= config.numLayers) {
          issues.push({
            path: ["perturb", "groups", "layers", i, end],
            message: `layer ${v} is beyond the model, which has ${config.numLayers} layers (0..${
              config.numLayers - 1
            }); use at most ${config.numLayers - 1}`,
          });
          break;
        }
      }
    });
  }

  const perturb = stageType("perturb", spec.perturb.type)?.impl as PerturbImpl | undefined;
  issues.push(...(perturb?.issues?.(spec.perturb, { config }) ?? []));

  const maxLen = spec.fitness.max_len;
  if (typeof maxLen === "number" && maxLen > config.maxPositionEmbeddings) {
    issues.push({
      path: ["fitness", "max_len"],
      message:
        `${maxLen} tokens exceed the model's max_position_embeddings ${config.maxPositionEmbeddings}; ` +
        `use at most ${config.maxPositionEmbeddings}`,
    });
  }
  return issues;
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
