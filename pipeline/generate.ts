/**
 * Generating text with a checkpoint: the library behind `deno task generate`. Prompts (text,
 * or ids) are tokenized (in the Qwen3 chat template with `chat`), decoded in batches with the KV
 * cache (model/decode.ts), and each one's new ids and text come back with the speed and the
 * device.
 *
 * The tokenizer: the checkpoint's own (tokenizers/pretrained.ts tokenizerForModel: its
 * tokenizer.json, else the one its state.json names), which `--tokenizer` must agree with; a
 * checkpoint that names none takes `--tokenizer`, else bytes for a 256-id model.
 *
 * Tests: tests/generate_cli_test.ts.
 *
 * @module
 */
import { dirname, join } from "node:path";
import { UserError } from "../errors.ts";
import { acquireDevice, type BackendChoice } from "../kernels/backend.ts";
import { destroyTensor } from "../kernels/tensor.ts";
import { openCheckpoint } from "../model/checkpoint.ts";
import type { Qwen3Config } from "../model/config.ts";
import { checkpointTensors, uploadWeights } from "../model/device_weights.ts";
import { Qwen3Decoder } from "../model/decode.ts";
import type { SamplingOptions } from "../model/sampling.ts";
import { qwen3TokenizerPath, type Tokenizer } from "../tokenizers/mod.ts";
import { tokenizerForModel } from "../tokenizers/pretrained.ts";
import { qwen3ChatTemplate } from "../tokenizers/chat.ts";
import { checkWeightsFit } from "./limits.ts";

/** One prompt: text to tokenize, or ids as they are; `source` names it in messages. */
export interface PromptInput {
  text?: string;
  ids?: number[];
  source: string;
}

/** What `deno task generate --json` prints per prompt. */
export interface GenerateOutput {
  new_ids: number[];
  text: string;
  /** Tokens generated per second over the prompt's batch (prefill included). */
  tokens_per_s: number;
  backend: string;
  device: string;
}

/** Options of {@link generateWithCheckpoint}. */
export interface GenerateWithOptions {
  maxNewTokens: number;
  sampling?: SamplingOptions;
  /** bytes, qwen3 or a tokenizer.json path; default the checkpoint's (see the module doc). */
  tokenizer?: string;
  /** Wrap text prompts in the Qwen3 chat template and stop at <|im_end|>. */
  chat?: boolean;
  backend?: BackendChoice;
  /** Prompts decoded at once. Default 16. */
  batch?: number;
  /** Called with each prompt's new text as it is generated (complete characters only). */
  onText?: (prompt: number, text: string) => void;
}

/**
 * The tokenizer of the model in `modelDir` (see the module doc), and the tokenizer_config.json
 * beside its tokenizer.json, when there is one (its chat_template is what --chat checks).
 */
export async function resolveTokenizer(
  modelDir: string,
  o: { flag?: string; config: Qwen3Config },
): Promise<{ tokenizer: Tokenizer; config?: Record<string, unknown> }> {
  const readConfig = async (dir: string) => {
    try {
      return JSON.parse(await Deno.readTextFile(join(dir, "tokenizer_config.json")));
    } catch {
      return undefined;
    }
  };
  const isFile = (p: string) => Deno.stat(p).then((s) => s.isFile, () => false);
  const { tokenizer } = await tokenizerForModel(modelDir, {
    tokenizer: o.flag,
    vocabSize: o.config.vocabSize,
  });
  if (o.flag === undefined || o.flag === "bytes") {
    return { tokenizer, config: await readConfig(modelDir) };
  }
  const file = o.flag === "qwen3" ? qwen3TokenizerPath() : o.flag;
  return { tokenizer, config: await readConfig((await isFile(file)) ? dirname(file) : file) };
}

/** Generates a continuation of every prompt with the checkpoint in `modelDir`. */
export async function generateWithCheckpoint(
  modelDir: string,
  prompts: readonly PromptInput[],
  o: GenerateWithOptions,
): Promise<GenerateOutput[]> {
  const ckpt = await openCheckpoint(modelDir);
  try {
    const config = ckpt.config;
    const { tokenizer, config: tokConfig } = await resolveTokenizer(modelDir, {
      flag: o.tokenizer,
      config,
    });
    if (tokenizer.vocabSize > config.vocabSize) {
      throw new UserError(
        `the ${tokenizer.name} tokenizer has ${tokenizer.vocabSize} ids but the model in ` +
          `${modelDir} has vocab_size ${config.vocabSize}; use the model's own tokenizer`,
      );
    }
    const chat = o.chat ? qwen3ChatTemplate(tokenizer, tokConfig) : undefined;
    const ids = prompts.map((p) => {
      const got = p.ids ?? tokenizer.encode(chat ? chat.render(p.text ?? "") : p.text ?? "");
      if (got.length === 0) {
        throw new UserError(`${p.source}: the prompt is empty; give at least one token`);
      }
      const bad = got.findIndex((id) => !Number.isInteger(id) || id < 0 || id >= config.vocabSize);
      if (bad >= 0) {
        throw new UserError(
          `${p.source}: token id ${got[bad]} at position ${bad} is outside the model's ` +
            `vocabulary [0, ${config.vocabSize})`,
        );
      }
      return got;
    });
    const longest = Math.max(...ids.map((p) => p.length));
    const positions = longest + o.maxNewTokens - 1;
    if (positions > config.maxPositionEmbeddings) {
      throw new UserError(
        `the longest prompt (${longest} tokens) and --max-new-tokens ${o.maxNewTokens} need ` +
          `${positions} positions, more than the max_position_embeddings ` +
          `${config.maxPositionEmbeddings} of ${modelDir}/config.json; shorten the prompt or ` +
          `generate fewer tokens`,
      );
    }
    const stopIds = [
      ...new Set(
        [config.eosTokenId, tokenizer.eosId, chat?.endId].filter((x): x is number =>
          x !== undefined
        ),
      ),
    ];
    const device = await acquireDevice({ backend: o.backend });
    try {
      checkWeightsFit(config, { backend: device.backend, source: `${modelDir}/config.json` });
      const weights = await uploadWeights(device, checkpointTensors(ckpt));
      const batch = Math.min(o.batch ?? 16, ids.length);
      const decoder = new Qwen3Decoder(device, config, weights, {
        maxBatch: batch,
        maxSeqLen: Math.max(1, positions),
      });
      const out: GenerateOutput[] = [];
      for (let first = 0; first < ids.length; first += batch) {
        const group = ids.slice(first, first + batch);
        const shown = group.map(() => "");
        const seen = group.map(() => [] as number[]);
        const result = await decoder.generate(group, {
          maxNewTokens: o.maxNewTokens,
          sampling: o.sampling,
          stopIds,
          decode: (x) => tokenizer.decode(x),
          onToken: o.onText
            ? (s, id) => {
              if (stopIds.includes(id)) return;
              seen[s].push(id);
              // Hold back an incomplete character (a byte tokenizer's partial UTF-8).
              const text = tokenizer.decode(seen[s]).replace(/\uFFFD+$/, "");
              if (text.length > shown[s].length && text.startsWith(shown[s])) {
                o.onText!(first + s, text.slice(shown[s].length));
                shown[s] = text;
              }
            }
            : undefined,
        });
        const rate = result.tokens / Math.max(result.seconds, 1e-9);
        result.sequences.forEach((g, s) => {
          if (o.onText && g.text !== undefined && g.text.length > shown[s].length) {
            o.onText(first + s, g.text.slice(shown[s].length));
          }
          out.push({
            new_ids: g.newIds,
            text: g.text ?? "",
            tokens_per_s: rate,
            backend: device.backend,
            device: device.name,
          });
        });
      }
      decoder.destroy();
      for (const t of weights.values()) destroyTensor(device, t);
      return out;
    } finally {
      device.destroy();
    }
  } finally {
    ckpt.close();
  }
}

/**
 * Reads a prompts file: JSON Lines, each line an object with "prompt" (text) or "prompt_ids"
 * (token ids). Every fault is one line naming FILE:LINE.
 */
export async function readPromptsFile(path: string): Promise<PromptInput[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch {
    throw new UserError(`${path}: cannot read the prompts file; check the path`);
  }
  const out: PromptInput[] = [];
  text.split("\n").forEach((line, i) => {
    if (line.trim() === "") return;
    const at = `${path}:${i + 1}`;
    let obj: unknown;
    try {
      obj = JSON.parse(line);
    } catch {
      throw new UserError(`${at}: not valid JSON; one object per line, {"prompt": "..."}`);
    }
    const o = obj as { prompt?: unknown; prompt_ids?: unknown };
    if (typeof o?.prompt === "string") out.push({ text: o.prompt, source: at });
    else if (Array.isArray(o?.prompt_ids)) {
      out.push({ ids: o.prompt_ids as number[], source: at });
    } else {
      throw new UserError(`${at}: no "prompt" string (or "prompt_ids" list); add one`);
    }
  });
  if (out.length === 0) throw new UserError(`${path}: no prompts; one JSON object per line`);
  return out;
}

/** Parses "1,2,3" into ids; anything else is a one-line error. */
export function parsePromptIds(value: string): number[] {
  const parts = value.split(",").map((s) => s.trim());
  const ids = parts.map(Number);
  const bad = parts.findIndex((s, i) => s === "" || !Number.isInteger(ids[i]) || ids[i] < 0);
  if (bad >= 0) {
    throw new UserError(
      `--prompt-ids must be comma-separated token ids like 1,2,3; "${parts[bad]}" is not one`,
    );
  }
  return ids;
}
