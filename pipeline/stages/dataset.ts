/**
 * Dataset stages: `text_lines` (a UTF-8 text file, one sample per non-empty line, as the paper's
 * novel corpus) and `jsonl` (one JSON object per line with a text field).
 *
 * @module
 */
import { z } from "zod";
import { posInt, registerStage } from "../spec.ts";
import { UserError } from "../../errors.ts";
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
  /**
   * Read at most this many bytes of the corpus: reading stops once max_lines samples are in, and
   * a corpus that reaches this size before that is an error, not an unbounded read. Absent:
   * 1 GiB ({@link DEFAULT_MAX_BYTES}; absent rather than defaulted, so a pipeline's recorded
   * form only holds it when it is set).
   */
  max_bytes: posInt().optional(),
  /**
   * Also read a corpus that is not a regular file (a FIFO, /dev/stdin, a device): a FIFO waits
   * for a writer and a device may never end, so this is an explicit choice. Absent: false.
   */
  allow_special_file: z.boolean().optional(),
};

/** The settings every dataset type shares, for a dataset stage in another module. */
export const datasetSettingsShape = common;

/** The corpus size cap when dataset.max_bytes is absent: 1 GiB. */
export const DEFAULT_MAX_BYTES = 2 ** 30;

const textLinesSchema = z.strictObject({ type: z.literal("text_lines"), ...common });

const jsonlSchema = z.strictObject({
  type: z.literal("jsonl"),
  ...common,
  /** The field holding the text. Default "text". */
  field: z.string().min(1).default("text"),
});

/** The settings every dataset type shares, validated. */
export type CommonSettings = Pick<
  z.infer<typeof textLinesSchema>,
  "path" | "max_lines" | "samples_per_iteration" | "holdout" | "max_bytes" | "allow_special_file"
>;

/** Resolves `path` against the pipeline's directory. */
export function resolvePath(path: string, ctx: Pick<StageContext, "baseDir">): string {
  if (path.startsWith("/")) return path;
  return `${ctx.baseDir.replace(/\/+$/, "")}/${path}`;
}

/** Bytes read per chunk of a corpus. */
const CHUNK = 1 << 16;

/**
 * Reads the corpus line by line, handing each line (without its newline) and its 1-based number
 * to `take` until it returns true (enough samples). Only a regular file unless
 * allow_special_file; never more than max_bytes; a NUL byte (binary data) or mostly invalid
 * UTF-8 is an error, a little invalid UTF-8 a warning. Every fault is one line at dataset.path.
 */
export async function readCorpusLines(
  settings: CommonSettings,
  ctx: StageContext,
  take: (line: string, lineNo: number) => boolean,
): Promise<void> {
  const path = resolvePath(settings.path, ctx);
  const at = `${ctx.where(["dataset", "path"])}: dataset.path: corpus ${path}`;
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound
      ? "does not exist"
      : (e as Error).message.split("\n")[0];
    throw new UserError(`${at} ${why}; fix the path`);
  }
  if (info.isDirectory) throw new UserError(`${at} is a directory; give a text file`);
  if (!info.isFile && settings.allow_special_file !== true) {
    throw new UserError(
      `${at} is not a regular file (a FIFO, a device or a socket, which may wait or never end); ` +
        `give a text file, or set dataset.allow_special_file: true to read it anyway`,
    );
  }
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (e) {
    throw new UserError(`${at} cannot be read (${(e as Error).message.split("\n")[0]})`);
  }
  const decoder = new TextDecoder("utf-8");
  const buf = new Uint8Array(CHUNK);
  const maxBytes = settings.max_bytes ?? DEFAULT_MAX_BYTES;
  let bytes = 0, chars = 0, invalid = 0, lineNo = 0, pending = "", done = false;
  const lines = (text: string, end: boolean) => {
    pending += text;
    let nl: number;
    while (!done && (nl = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, nl).replace(/\r$/, "");
      pending = pending.slice(nl + 1);
      done = take(line, ++lineNo);
    }
    if (end && !done && pending !== "") done = take(pending.replace(/\r$/, ""), ++lineNo);
  };
  try {
    while (!done) {
      const n = await file.read(buf);
      if (n === null) {
        lines(decoder.decode(), true);
        break;
      }
      const chunk = buf.subarray(0, n);
      const nul = chunk.indexOf(0);
      if (nul >= 0) {
        throw new UserError(
          `${at} holds binary data (a NUL byte at byte ${
            bytes + nul
          }), not text; give a UTF-8 text file`,
        );
      }
      bytes += n;
      if (bytes > maxBytes) {
        throw new UserError(
          `${at} is larger than dataset.max_bytes (${maxBytes} bytes) before ` +
            `max_lines ${settings.max_lines} samples are in; raise max_bytes, lower max_lines, or trim the file`,
        );
      }
      const text = decoder.decode(chunk, { stream: true });
      chars += text.length;
      for (let i = text.indexOf("\uFFFD"); i >= 0; i = text.indexOf("\uFFFD", i + 1)) invalid++;
      lines(text, false);
    }
  } finally {
    file.close();
  }
  if (invalid > 0 && invalid > chars / 100) {
    throw new UserError(
      `${at} is not UTF-8 text (${invalid} of ${chars} characters are invalid); ` +
        `give a UTF-8 text file (convert it with iconv -t UTF-8)`,
    );
  }
  if (invalid > 0) {
    ctx.warn?.(
      `${at} has ${invalid} invalid UTF-8 sequences, read as U+FFFD; convert it to UTF-8 (iconv -t UTF-8) to train on its own characters`,
    );
  }
}

function nonEmpty(samples: string[], settings: CommonSettings, ctx: StageContext): string[] {
  if (samples.length === 0) {
    throw new UserError(
      `${
        ctx.where(["dataset", "path"])
      }: dataset.path: corpus ${settings.path} has no non-empty samples; give a text file`,
    );
  }
  return samples;
}

/**
 * The dataset implementation of `settings` whose corpus `sample` turns line by line into
 * samples (a string, or null for a line that is none), up to max_lines of them.
 */
function dataset(
  settings: CommonSettings,
  sample: (line: string, lineNo: number, ctx: StageContext) => string | null,
): DatasetImpl {
  return {
    samplesPerIteration: settings.samples_per_iteration,
    holdout: settings.holdout,
    async load(ctx) {
      const samples: string[] = [];
      await readCorpusLines(settings, ctx, (line, lineNo) => {
        const s = sample(line, lineNo, ctx);
        if (s !== null) samples.push(s);
        return samples.length >= settings.max_lines;
      });
      return nonEmpty(samples, settings, ctx);
    },
  };
}

function textLines(settings: z.infer<typeof textLinesSchema>): DatasetImpl {
  return dataset(settings, (line) => line.trim().length > 0 ? line : null);
}

function jsonl(settings: z.infer<typeof jsonlSchema>): DatasetImpl {
  const { field } = settings;
  return dataset(settings, (line, lineNo, ctx) => {
    if (line.trim().length === 0) return null;
    let obj: unknown;
    try {
      obj = JSON.parse(line);
    } catch {
      throw new UserError(
        `${resolvePath(settings.path, ctx)}:${lineNo}: not valid JSON; one object per line`,
      );
    }
    const v = (obj as Record<string, unknown>)?.[field];
    if (typeof v !== "string") {
      throw new UserError(
        `${
          resolvePath(settings.path, ctx)
        }:${lineNo}: no string field "${field}"; set dataset.field to the field that holds the text`,
      );
    }
    return v.trim().length > 0 ? v : null;
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
