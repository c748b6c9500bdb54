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

const textLinesSchema = z.strictObject({ type: z.literal("text_lines"), ...common });

const jsonlSchema = z.strictObject({
  type: z.literal("jsonl"),
  ...common,
  /** The field holding the text. Default "text". */
  field: z.string().min(1).default("text"),
});

/** The settings every dataset type shares, validated. */
type CommonSettings = Pick<
  z.infer<typeof textLinesSchema>,
  "path" | "max_lines" | "samples_per_iteration" | "holdout"
>;

/** Resolves `path` against the pipeline's directory. */
export function resolvePath(path: string, ctx: Pick<StageContext, "baseDir">): string {
  if (path.startsWith("/")) return path;
  return `${ctx.baseDir.replace(/\/+$/, "")}/${path}`;
}

async function readCorpus(settings: CommonSettings, ctx: StageContext): Promise<string> {
  const path = resolvePath(settings.path, ctx);
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

function nonEmpty(samples: string[], settings: CommonSettings, ctx: StageContext): string[] {
  const out = samples.slice(0, settings.max_lines);
  if (out.length === 0) {
    throw new UserError(
      `${
        ctx.where(["dataset", "path"])
      }: dataset.path: corpus ${settings.path} has no non-empty samples; give a text file`,
    );
  }
  return out;
}

/** The dataset implementation of `settings` whose corpus `parse` splits into samples. */
function dataset(
  settings: CommonSettings,
  parse: (text: string, ctx: StageContext) => string[],
): DatasetImpl {
  return {
    samplesPerIteration: settings.samples_per_iteration,
    holdout: settings.holdout,
    async load(ctx) {
      return nonEmpty(parse(await readCorpus(settings, ctx), ctx), settings, ctx);
    },
  };
}

function textLines(settings: z.infer<typeof textLinesSchema>): DatasetImpl {
  return dataset(settings, (text) => text.split(/\r?\n/).filter((l) => l.trim().length > 0));
}

function jsonl(settings: z.infer<typeof jsonlSchema>): DatasetImpl {
  return dataset(settings, (text, ctx) => {
    const { field } = settings;
    const samples: string[] = [];
    text.split(/\r?\n/).forEach((line, i) => {
      if (line.trim().length === 0) return;
      let obj: unknown;
      try {
        obj = JSON.parse(line);
      } catch {
        throw new UserError(
          `${resolvePath(settings.path, ctx)}:${i + 1}: not valid JSON; one object per line`,
        );
      }
      const v = (obj as Record<string, unknown>)?.[field];
      if (typeof v !== "string") {
        throw new UserError(
          `${resolvePath(settings.path, ctx)}:${
            i + 1
          }: no string field "${field}"; set dataset.field to the field that holds the text`,
        );
      }
      if (v.trim().length > 0) samples.push(v);
    });
    return samples;
  });
}

registerStage({
  kind: "dataset",
  type: "text_lines",
  description: "UTF-8 text file, one sample per non-empty line",
  schema: textLinesSchema,
  create: textLines,
});

registerStage({
  kind: "dataset",
  type: "jsonl",
  description: "JSON Lines, one sample per object's text field",
  schema: jsonlSchema,
  create: jsonl,
});
