/**
 * Tokenizers: text to token ids and back. {@link loadTokenizer} takes "bytes" (built in, 256 ids),
 * "qwen3" (the real Qwen3 vocabulary, shipped in npm) or the path of a Hugging Face
 * tokenizer.json.
 *
 * @module
 */

import { createBytesTokenizer } from "./bytes.ts";
import { loadHfTokenizer } from "./hf.ts";
import { loadQwen3Tokenizer } from "./qwen3.ts";

export { BYTES_VOCAB_SIZE, createBytesTokenizer } from "./bytes.ts";
export {
  hfTokenizerFromJson,
  type HfTokenizerFromJsonOptions,
  loadHfTokenizer,
  type LoadHfTokenizerOptions,
} from "./hf.ts";
export {
  loadQwen3Tokenizer,
  QWEN3_MODEL_VOCAB_SIZE,
  QWEN3_PAD_ID,
  QWEN3_TOKEN_COUNT,
  qwen3TokenizerPath,
} from "./qwen3.ts";

/** Text to token ids and back. Encoding adds no special tokens: we score raw text. */
export interface Tokenizer {
  /** "bytes", "qwen3", or the path of the tokenizer.json. */
  name: string;
  /** Highest id + 1, added tokens included. A model's embedding may have more rows (padding). */
  vocabSize: number;
  /** Token ids of `text`, with no BOS/EOS added. */
  encode(text: string): number[];
  /** Text of `ids`; throws a RangeError for an id outside 0..vocabSize-1. */
  decode(ids: number[]): string;
  /** Id that fills the tail of a ragged batch. */
  padId: number;
  /** Beginning-of-sequence id, when the tokenizer has one. */
  bosId?: number;
  /** End-of-sequence id, when the tokenizer has one. */
  eosId?: number;
}

/**
 * Loads the tokenizer that `spec` names: "bytes", "qwen3", or a path to a tokenizer.json or to a
 * directory holding one. A missing or invalid file is a UserError.
 */
export async function loadTokenizer(spec: "bytes" | "qwen3" | string): Promise<Tokenizer> {
  if (spec === "bytes") return createBytesTokenizer();
  if (spec === "qwen3") return await loadQwen3Tokenizer();
  return await loadHfTokenizer(spec);
}
