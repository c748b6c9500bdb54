/**
 * A tokenizer as files beside a model, the way transformers' save_pretrained writes them:
 * tokenizer.json (the Hugging Face tokenizers format), tokenizer_config.json and, for the
 * model, generation_config.json. A checkpoint that carries them is scored and sampled with its
 * own tokenizer ({@link tokenizerForModel}); `--tokenizer` then only confirms it.
 *
 * - qwen3 and hf: the tokenizer's own tokenizer.json and tokenizer_config.json, byte for byte.
 * - bytes: an equivalent tokenizer.json that Hugging Face tokenizers (Rust and JS) load too: a
 *   byte-level BPE with one token per byte value and no merges, so ids are the UTF-8 bytes,
 *   as the built-in tokenizer's; tokenizer_config.json marks it `"esflow_tokenizer": "bytes"`,
 *   and esflow reads it back as the built-in one.
 *
 * Which tokenizer a file is: the SHA-256 of its tokenizer.json ({@link tokenizerIdentity}), so
 * `--tokenizer qwen3` and a checkpoint carrying the qwen3 files agree, and any other file does
 * not.
 *
 * @module
 */
import { UserError } from "../errors.ts";
import { BYTES_VOCAB_SIZE, createBytesTokenizer } from "./bytes.ts";
import { loadHfTokenizer } from "./hf.ts";
import { loadTokenizer } from "./load.ts";
import type { Tokenizer } from "./tokenizer.ts";

/** The files of a tokenizer, by name, as a model directory holds them. */
export type TokenizerFiles = Record<string, string | Uint8Array>;

/** The key of tokenizer_config.json that names an esflow built-in tokenizer. */
export const ESFLOW_TOKENIZER_KEY = "esflow_tokenizer";

/**
 * GPT-2's byte-to-unicode table (what every byte-level BPE uses): printable bytes map to
 * themselves, the rest to U+0100 onwards, so each byte is one visible character.
 */
export function byteToUnicode(): string[] {
  const keep: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) keep.push(b);
  for (let b = 0xa1; b <= 0xac; b++) keep.push(b);
  for (let b = 0xae; b <= 0xff; b++) keep.push(b);
  const table: string[] = new Array(256);
  let next = 0;
  for (let b = 0; b < 256; b++) {
    table[b] = String.fromCodePoint(keep.includes(b) ? b : 256 + next++);
  }
  return table;
}

/** The byte tokenizer as a Hugging Face tokenizer.json: id = byte value, no merges. */
export function bytesTokenizerJson(): Record<string, unknown> {
  const chars = byteToUnicode();
  const byteLevel = {
    type: "ByteLevel",
    add_prefix_space: false,
    trim_offsets: false,
    use_regex: false,
  };
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [],
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: null,
    decoder: byteLevel,
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: Object.fromEntries(chars.map((c, b) => [c, b])),
      merges: [],
    },
  };
}

/** tokenizer_config.json of the byte tokenizer: padding with id 0 (NUL), as the built-in. */
function bytesTokenizerConfig(): Record<string, unknown> {
  return {
    [ESFLOW_TOKENIZER_KEY]: "bytes",
    tokenizer_class: "PreTrainedTokenizerFast",
    pad_token: byteToUnicode()[0],
    clean_up_tokenization_spaces: false,
    model_max_length: 1_000_000_000,
  };
}

const json = (v: unknown) => JSON.stringify(v, null, 2) + "\n";

/**
 * tokenizer.json and tokenizer_config.json of a tokenizer; null for one that has no files (a
 * custom stage's tokenizer that does not say).
 */
export async function tokenizerFiles(tokenizer: Tokenizer): Promise<TokenizerFiles | null> {
  const source = tokenizer.files;
  if (!source) return null;
  if (source.kind === "bytes") {
    return {
      "tokenizer.json": json(bytesTokenizerJson()),
      "tokenizer_config.json": json(bytesTokenizerConfig()),
    };
  }
  const files: TokenizerFiles = { "tokenizer.json": await Deno.readFile(source.tokenizerJson) };
  if (source.config !== undefined) {
    files["tokenizer_config.json"] = await Deno.readFile(source.config);
  }
  return files;
}

/**
 * generation_config.json of a model whose tokenizer is `tokenizer`: its BOS, EOS and pad ids,
 * as transformers' GenerationConfig reads them (a tokenizer without EOS, like bytes, has none).
 */
export function generationConfig(tokenizer: Tokenizer): Record<string, unknown> {
  return {
    ...(tokenizer.bosId !== undefined ? { bos_token_id: tokenizer.bosId } : {}),
    ...(tokenizer.eosId !== undefined ? { eos_token_id: tokenizer.eosId } : {}),
    pad_token_id: tokenizer.padId,
  };
}

/**
 * What a checkpoint writes beside config.json for its tokenizer: tokenizer.json,
 * tokenizer_config.json and generation_config.json; {} for a tokenizer with no files.
 */
export async function checkpointTokenizerFiles(tokenizer: Tokenizer): Promise<TokenizerFiles> {
  const files = await tokenizerFiles(tokenizer);
  if (!files) return {};
  return { ...files, "generation_config.json": json(generationConfig(tokenizer)) };
}

/** Lowercase hex SHA-256. */
async function sha256(data: string | Uint8Array): Promise<string> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const d = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Which tokenizer this is: the SHA-256 of its tokenizer.json; null when it has no files. */
export async function tokenizerIdentity(tokenizer: Tokenizer): Promise<string | null> {
  const files = await tokenizerFiles(tokenizer);
  return files ? await sha256(files["tokenizer.json"]) : null;
}

async function readIfFile(path: string): Promise<Uint8Array | null> {
  try {
    return await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.IsADirectory) return null;
    throw new UserError(`${path}: cannot read (${String((e as Error).message).split("\n")[0]})`);
  }
}

/** A model dir's own tokenizer, from its tokenizer.json (and tokenizer_config.json). */
export interface CheckpointTokenizer {
  tokenizer: Tokenizer;
  /** {@link tokenizerIdentity} of it. */
  identity: string;
  /** Where it was read: DIR/tokenizer.json. */
  source: string;
}

/**
 * The tokenizer a model directory carries (tokenizer.json beside config.json, as
 * save_pretrained writes it, and esflow's checkpoints do); null when it carries none.
 */
export async function tokenizerOfCheckpoint(dir: string): Promise<CheckpointTokenizer | null> {
  const base = dir.replace(/\/+$/, "");
  const file = `${base}/tokenizer.json`;
  const bytes = await readIfFile(file);
  if (!bytes) return null;
  const identity = await sha256(bytes);
  const configBytes = await readIfFile(`${base}/tokenizer_config.json`);
  let config: Record<string, unknown> = {};
  if (configBytes) {
    try {
      config = JSON.parse(new TextDecoder().decode(configBytes));
    } catch (e) {
      throw new UserError(
        `${base}/tokenizer_config.json: invalid JSON (${
          String((e as Error).message).split("\n")[0]
        })`,
      );
    }
  }
  // esflow's own byte tokenizer, written as an equivalent tokenizer.json: read back as itself.
  if (config?.[ESFLOW_TOKENIZER_KEY] === "bytes") {
    return { tokenizer: createBytesTokenizer(), identity, source: file };
  }
  const tokenizer = await loadHfTokenizer(file, { name: file });
  return { tokenizer, identity, source: file };
}

/** Options of {@link tokenizerForModel}. */
export interface TokenizerForModelOptions {
  /** `--tokenizer`: bytes, qwen3, or a tokenizer.json path (or its directory). */
  tokenizer?: string;
  /** `--allow-tokenizer-change`: use `tokenizer` even when the model carries another. */
  allowChange?: boolean;
  /** The model's vocab_size, to choose for a model dir that names no tokenizer at all. */
  vocabSize?: number;
  /** The flag names, for messages. Default "--tokenizer" and "--allow-tokenizer-change". */
  flag?: string;
  allowFlag?: string;
}

/** The tokenizer to read and write a model's text with, and where it came from. */
export interface ModelTokenizer {
  tokenizer: Tokenizer;
  /** "DIR/tokenizer.json", "DIR/state.json's pipeline", "--tokenizer X", or "bytes (…)". */
  source: string;
}

/**
 * The tokenizer for the model in `dir`, for `deno task eval` and `deno task generate`:
 *
 * 1. The model's own: tokenizer.json in the dir (esflow checkpoints and save_pretrained dirs
 *    carry it), else the tokenizer its state.json's pipeline names (checkpoints of an esflow
 *    that wrote no tokenizer files; bytes or qwen3).
 * 2. `tokenizer` (the flag) must agree with it (the same tokenizer.json): another one is a
 *    one-line UserError unless `allowChange`.
 * 3. A dir that names no tokenizer takes the flag; without one, bytes when the model's
 *    vocab_size is the byte tokenizer's 256, else a UserError asking for `--tokenizer`.
 */
export async function tokenizerForModel(
  dir: string,
  o: TokenizerForModelOptions = {},
): Promise<ModelTokenizer> {
  const flag = o.flag ?? "--tokenizer", allowFlag = o.allowFlag ?? "--allow-tokenizer-change";
  const own = await ownTokenizer(dir);
  if (o.tokenizer === undefined) {
    if (own) return own;
    if (o.vocabSize === undefined || o.vocabSize === BYTES_VOCAB_SIZE) {
      return { tokenizer: createBytesTokenizer(), source: "bytes (the model carries none)" };
    }
    throw new UserError(
      `${dir} carries no tokenizer (no tokenizer.json beside config.json, no state.json) and its ` +
        `vocab_size ${o.vocabSize} is not the byte tokenizer's ${BYTES_VOCAB_SIZE}; ` +
        `give ${flag} bytes|qwen3|PATH`,
    );
  }
  const given = await loadTokenizer(o.tokenizer);
  if (own && !o.allowChange) {
    const [a, b] = await Promise.all([tokenizerIdentity(own.tokenizer), tokenizerIdentity(given)]);
    const ownId = own.identity ?? a;
    if (ownId !== b) {
      throw new UserError(
        `${flag} ${o.tokenizer} is not the tokenizer of the model in ${dir} (${own.source}); ` +
          `drop ${flag} to use the model's own, or pass ${allowFlag} to score with this one anyway`,
      );
    }
  }
  return { tokenizer: given, source: `${flag} ${o.tokenizer}` };
}

/** The tokenizer a model dir names: its files, else its state.json's pipeline. */
async function ownTokenizer(
  dir: string,
): Promise<(ModelTokenizer & { identity?: string }) | null> {
  const files = await tokenizerOfCheckpoint(dir);
  if (files) return files;
  const state = await readIfFile(`${dir.replace(/\/+$/, "")}/state.json`);
  if (!state) return null;
  let named: { type?: unknown } | undefined;
  try {
    named = JSON.parse(new TextDecoder().decode(state))?.pipeline?.tokenizer;
  } catch {
    return null; // a damaged state.json names nothing; train's resume reports it
  }
  const source = `${dir.replace(/\/+$/, "")}/state.json (tokenizer: ${named?.type})`;
  if (named?.type === "bytes") return { tokenizer: createBytesTokenizer(), source };
  if (named?.type === "qwen3") return { tokenizer: await loadTokenizer("qwen3"), source };
  return null;
}
