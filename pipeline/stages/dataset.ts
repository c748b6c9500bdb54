/**
 * Dataset stages: `text_lines` (a UTF-8 text file, one sample per non-empty line, as the paper's
 * novel corpus) and `jsonl` (one JSON object per line with a text field).
 *
 * @module
 */
import { z } from "zod";
import { posInt, registerStage } from "../spec.ts";
import { UserError } from "../errors.ts";
import type { DatasetImpl, StageContext } from "./types.ts";

/** Settings every dataset type shares. */
const common = {
  /** Corpus file; relative paths resolve against the pipeline file's directory. */
  path: z.string().min(1),
  /** Use at most this many samples (lines) of the file, from the top. Default 10000 (the paper's). */
  max_lines: posInt().default(10000),
  /** M: samples drawn (without replacement) for each iteration's fitness. Default 5000 (the paper's). */
  samples_per_iteration: posInt().default(5000),
  /** Samples held out (never drawn for fitness) to measure the evaluation loss. Default 256. */
  holdout: z.number().int().nonnegative().default(256),
};

/** Resolves `path` against the pipeline's directory. */
export function resolvePath(path: string, ctx: StageContext): string {
  if (path.startsWith("/")) return path;
  return `${ctx.baseDir.replace(/\/+$/, "")}/${path}`;
}

async function readCorpus(settings: Record<string, unknown>, ctx: StageContext): Promise<string> {
  const path = resolvePath(settings.path as string, ctx);
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound
      ? "does not exist"
      : (e as Error).message.split("\n")[0];
    throw new UserError(
      `${ctx.where(["dataset", "path"])}: dataset.path: corpus ${path} ${why}; fix the path`,
    );
  }
}

function nonEmpty(
  samples: string[],
  settings: Record<string, unknown>,
  ctx: StageContext,
): string[] {
  const out = samples.slice(0, settings.max_lines as number);
  if (out.length === 0) {
    throw new UserError(
      `${
        ctx.where(["dataset", "path"])
      }: dataset.path: corpus ${settings.path} has no non-empty samples; give a text file`,
    );
  }
  return out;
}

const textLines: DatasetImpl = {
  async load(settings, ctx) {
    const text = await readCorpus(settings, ctx);
    return nonEmpty(text.split(/\r?\n/).filter((l) => l.trim().length > 0), settings, ctx);
  },
};

const jsonl: DatasetImpl = {
  async load(settings, ctx) {
    const text = await readCorpus(settings, ctx);
    const field = settings.field as string;
    const samples: string[] = [];
    text.split(/\r?\n/).forEach((line, i) => {
      if (line.trim().length === 0) return;
      let obj: unknown;
      try {
        obj = JSON.parse(line);
      } catch {
        throw new UserError(
          `${resolvePath(settings.path as string, ctx)}:${
            i + 1
          }: not valid JSON; one object per line`,
        );
      }
      const v = (obj as Record<string, unknown>)?.[field];
      if (typeof v !== "string") {
        throw new UserError(
          `${resolvePath(settings.path as string, ctx)}:${
            i + 1
          }: no string field "${field}"; set dataset.field to the field that holds the text`,
        );
      }
      if (v.trim().length > 0) samples.push(v);
    });
    return nonEmpty(samples, settings, ctx);
  },
};

registerStage({
  kind: "dataset",
  type: "text_lines",
  description: "UTF-8 text file, one sample per non-empty line",
  schema: z.strictObject({ type: z.literal("text_lines"), ...common }),
  impl: textLines,
});

registerStage({
  kind: "dataset",
  type: "jsonl",
  description: "JSON Lines, one sample per object's text field",
  schema: z.strictObject({
    type: z.literal("jsonl"),
    ...common,
    /** The field holding the text. Default "text". */
    field: z.string().min(1).default("text"),
  }),
  impl: jsonl,
});
