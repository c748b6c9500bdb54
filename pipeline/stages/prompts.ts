/**
 * Dataset stage `prompts`: JSON Lines of prompts for the reward fitness (pipeline/stages/reward.ts),
 * one object per line with the prompt and the fields its reward reads:
 *
 * ```json
 * {"prompt": "Use 3 5 7 to make 22: ", "numbers": [3, 5, 7], "target": 22}
 * ```
 *
 * Each record becomes one sample, the text {@link promptSampleText} writes (the prompt and the
 * record as JSON), so the run's machinery — the held-out split, the per-iteration subsets, the
 * data digest a resume checks — takes prompts as it takes text; {@link parsePromptSample} reads
 * one back. The corpus is read as every dataset's (pipeline/stages/dataset.ts): a regular
 * UTF-8 file, at most max_lines records and max_bytes bytes.
 *
 * @module
 */
import { z } from "zod";
import { registerStage } from "../spec.ts";
import { UserError } from "../../errors.ts";
import { datasetSettingsShape, readCorpusLines, resolvePath } from "./dataset.ts";
import type { DatasetImpl } from "./types.ts";

/** One prompt and its record (every field of its line, the prompt's included). */
export interface PromptSample {
  prompt: string;
  fields: Record<string, unknown>;
}

/** The key that marks a sample as a prompt record. */
const MARK = "esflow_prompt";

/** The sample text of a prompt record. */
export function promptSampleText(s: PromptSample): string {
  return JSON.stringify({ [MARK]: s.prompt, fields: s.fields });
}

/**
 * The prompt record of a sample: a prompts dataset's, or any other sample's text as a prompt
 * with no fields.
 */
export function parsePromptSample(text: string): PromptSample {
  if (text.startsWith(`{"${MARK}":`)) {
    try {
      const o = JSON.parse(text);
      if (typeof o[MARK] === "string" && o.fields && typeof o.fields === "object") {
        return { prompt: o[MARK], fields: o.fields };
      }
    } catch { /* not a record after all: a text sample */ }
  }
  return { prompt: text, fields: {} };
}

const promptsSchema = z.strictObject({
  type: z.literal("prompts"),
  ...datasetSettingsShape,
  /** The field holding the prompt text. Default "prompt". */
  prompt_field: z.string().min(1).default("prompt"),
});

function prompts(settings: z.infer<typeof promptsSchema>): DatasetImpl {
  const field = settings.prompt_field;
  return {
    samplesPerIteration: settings.samples_per_iteration,
    holdout: settings.holdout,
    async load(ctx) {
      const file = resolvePath(settings.path, ctx);
      const samples: string[] = [];
      await readCorpusLines(settings, ctx, (line, lineNo) => {
        if (line.trim() === "") return false;
        let obj: unknown;
        try {
          obj = JSON.parse(line);
        } catch {
          throw new UserError(
            `${file}:${lineNo}: not valid JSON; one object per line, {"${field}": "...", ...}`,
          );
        }
        if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
          throw new UserError(`${file}:${lineNo}: expected a JSON object, {"${field}": "..."}`);
        }
        const prompt = (obj as Record<string, unknown>)[field];
        if (typeof prompt !== "string" || prompt === "") {
          throw new UserError(
            `${file}:${lineNo}: no non-empty string field "${field}"; set dataset.prompt_field ` +
              `to the field that holds the prompt`,
          );
        }
        samples.push(promptSampleText({ prompt, fields: obj as Record<string, unknown> }));
        return samples.length >= settings.max_lines;
      });
      if (samples.length === 0) {
        throw new UserError(
          `${ctx.where(["dataset", "path"])}: dataset.path: ${file} holds no prompts; one JSON ` +
            `object per line`,
        );
      }
      return samples;
    },
  };
}

registerStage({
  kind: "dataset",
  type: "prompts",
  description: "JSON Lines of prompts and the fields their reward reads (for fitness: reward)",
  schema: promptsSchema,
  create: prompts,
});
