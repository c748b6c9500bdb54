/**
 * Hugging Face `tokenizer.json` files, run through the pure-JS `@huggingface/tokenizers`. It
 * supports the BPE, WordPiece, Unigram and WordLevel models with their normalizers, pre-tokenizers and
 * decoders, which covers Qwen3, Llama 3, GPT-2 and most hub models. Everything is read from local
 * files; nothing is fetched.
 *
 * @module
 */

import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { dirname, join } from "node:path";
import { UserError } from "../errors.ts";
import type { Tokenizer } from "./tokenizer.ts";

/** Options for {@link loadHfTokenizer}. */
export interface LoadHfTokenizerOptions {
  /** Name the tokenizer reports; default: the path of the tokenizer.json. */
  name?: string;
}

/** Options for {@link hfTokenizerFromJson}. */
export interface HfTokenizerFromJsonOptions {
  /** Name the tokenizer reports, also used in error messages; default "tokenizer.json". */
  name?: string;
  /** Parsed tokenizer_config.json (gives pad/bos/eos tokens); default {}. */
  config?: Record<string, unknown>;
}

/**
 * Loads a Hugging Face tokenizer from `path`: a tokenizer.json file, or a directory holding one.
 * A tokenizer_config.json beside it, when present, names the pad, BOS and EOS tokens. A missing
 * file, bad JSON or a tokenizer the library cannot build is a {@link UserError}.
 */
export async function loadHfTokenizer(
  path: string,
  options: LoadHfTokenizerOptions = {},
): Promise<Tokenizer> {
  const file = await findTokenizerJson(path);
  const json = await readJsonObject(file);
  const configFile = join(dirname(file), "tokenizer_config.json");
  const hasConfig = await exists(configFile);
  const config = hasConfig ? await readJsonObject(configFile) : {};
  return {
    ...hfTokenizerFromJson(json, { name: options.name ?? file, config }),
    // A checkpoint of a model trained with it carries these two files (tokenizers/pretrained.ts).
    files: { kind: "hf", tokenizerJson: file, ...(hasConfig ? { config: configFile } : {}) },
  };
}

/**
 * Builds a {@link Tokenizer} from an already parsed tokenizer.json object. `encode` adds no special
 * tokens (we score raw text) and `decode` neither drops special tokens nor cleans up spaces, so
 * `decode(encode(s))` gives back `s` for byte-level BPE tokenizers such as Qwen3's (up to the
 * tokenizer's own normalizer, NFC for Qwen3).
 *
 * `vocabSize` is the highest id + 1, added tokens included; a model's embedding may be larger
 * (Qwen3 pads 151,669 to 151,936). The pad id is the config's pad_token, else its eos_token, else 0.
 */
export function hfTokenizerFromJson(
  json: Record<string, unknown>,
  options: HfTokenizerFromJsonOptions = {},
): Tokenizer {
  const name = options.name ?? "tokenizer.json";
  const config = options.config ?? {};
  const model = json.model;
  if (model === null || typeof model !== "object" || Array.isArray(model)) {
    throw new UserError(
      `${name}: no "model" object, so this is not a Hugging Face tokenizer.json; ` +
        `fix: point at the tokenizer.json saved by tokenizers or transformers`,
    );
  }
  // tokenizer.json files written by the Rust crate always carry these keys (null when unused);
  // hand-written ones often leave them out, which the library rejects, so default them here.
  const full = {
    normalizer: null,
    pre_tokenizer: null,
    post_processor: null,
    decoder: null,
    ...json,
    added_tokens: Array.isArray(json.added_tokens) ? json.added_tokens : [],
  };
  const modelFields = model as Record<string, unknown>;
  // The library has no WordLevel model: it runs one through its Legacy model, which takes the
  // unk token from tokenizer_config.json rather than from the model, so copy it across.
  const libConfig = modelFields.type === "WordLevel" && config.unk_token === undefined
    ? { ...config, unk_token: modelFields.unk_token }
    : config;
  let hf: HfTokenizer;
  try {
    hf = new HfTokenizer(full, libConfig);
  } catch (err) {
    throw new UserError(
      `${name}: @huggingface/tokenizers cannot build this tokenizer (${errorLine(err)}); ` +
        `fix: use a BPE, WordPiece, Unigram or WordLevel tokenizer.json saved by tokenizers`,
    );
  }
  const vocabSize = highestId(modelFields, full.added_tokens) + 1;
  if (vocabSize <= 0) {
    throw new UserError(`${name}: the vocab is empty; fix: use a tokenizer.json with a vocab`);
  }
  const tokenId = (key: string): number | undefined => {
    const value = config[key];
    // tokenizer_config.json writes a special token either as a string or as an AddedToken object.
    const content = typeof value === "string"
      ? value
      : (value !== null && typeof value === "object" && "content" in value)
      ? String(value.content)
      : undefined;
    return content === undefined ? undefined : hf.token_to_id(content);
  };
  const bosId = tokenId("bos_token");
  const eosId = tokenId("eos_token");
  return {
    name,
    vocabSize,
    padId: tokenId("pad_token") ?? eosId ?? 0,
    ...(bosId === undefined ? {} : { bosId }),
    ...(eosId === undefined ? {} : { eosId }),
    encode(text) {
      const { ids, tokens } = hf.encode(text, { add_special_tokens: false });
      const bad = ids.findIndex((id) => !Number.isInteger(id));
      if (bad >= 0) {
        throw new UserError(
          `${name}: the piece ${JSON.stringify(tokens[bad])} is not in the vocab and the model ` +
            `has no unk_token; fix: use a byte-level tokenizer or add an unk_token to the model`,
        );
      }
      return ids;
    },
    decode(ids) {
      for (let i = 0; i < ids.length; i++) {
        const id = ids[i];
        if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
          throw new RangeError(`${name}: id ${id} at position ${i} is not in 0..${vocabSize - 1}`);
        }
      }
      // The library throws on an empty list.
      if (ids.length === 0) return "";
      return hf.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
    },
  };
}

/** Highest id in a tokenizer.json model's vocab and its added tokens, or -1 when both are empty. */
function highestId(model: Record<string, unknown>, addedTokens: unknown[]): number {
  let top = -1;
  const vocab = model.vocab;
  if (Array.isArray(vocab)) {
    // Unigram: the vocab is a list of [piece, score] and the id is the index.
    top = vocab.length - 1;
  } else if (vocab !== null && typeof vocab === "object") {
    for (const id of Object.values(vocab)) if (typeof id === "number" && id > top) top = id;
  }
  for (const token of addedTokens) {
    const id = (token as { id?: unknown })?.id;
    if (typeof id === "number" && id > top) top = id;
  }
  return top;
}

/** The tokenizer.json that `path` names: the file itself, or the one inside a directory. */
async function findTokenizerJson(path: string): Promise<string> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new UserError(
        `${path}: no such file or directory; ` +
          `fix: give "bytes", "qwen3", a tokenizer.json path, or a directory holding tokenizer.json`,
      );
    }
    throw new UserError(`${path}: cannot read (${errorLine(err)}); fix: check the permissions`);
  }
  if (!info.isDirectory) return path;
  const file = join(path, "tokenizer.json");
  if (!(await exists(file))) {
    throw new UserError(
      `${path}: directory has no tokenizer.json; ` +
        `fix: save the tokenizer there (tokenizer.save_pretrained) or give the file's path`,
    );
  }
  return file;
}

/** Reads and parses a JSON file that must hold an object; any fault is a {@link UserError}. */
async function readJsonObject(file: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (err) {
    throw new UserError(`${file}: cannot read (${errorLine(err)}); fix: check the path`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new UserError(
      `${file}: invalid JSON (${errorLine(err)}); fix: re-save the file from tokenizers`,
    );
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new UserError(
      `${file}: the JSON is not an object; fix: re-save the file from tokenizers`,
    );
  }
  return value as Record<string, unknown>;
}

async function exists(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

/** The first line of an error's message, so a UserError stays on one line. */
function errorLine(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  return message.split("\n")[0];
}
