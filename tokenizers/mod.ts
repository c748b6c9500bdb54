/**
 * Tokenizers: text to token ids and back. {@link loadTokenizer} takes "bytes" (built in, 256 ids),
 * "qwen3" (the real Qwen3 vocabulary, shipped in npm) or the path of a Hugging Face
 * tokenizer.json.
 *
 * @module
 */

import { createBytesTokenizer } from "./bytes.ts";
import type { Tokenizer } from "./tokenizer.ts";
import { loadHfTokenizer } from "./hf.ts";
import { loadQwen3Tokenizer } from "./qwen3.ts";

export type { Tokenizer } from "./tokenizer.ts";
export { BYTES_VOCAB_SIZE, createBytesTokenizer } from "./bytes.ts";
export {
  hfTokenizerFromJson,
  type HfTokenizerFromJsonOptions,
  loadHfTokenizer,
  type LoadHfTokenizerOptions,
} from "./hf.ts";
export {
  checkpointTokenizerFiles,
  generationConfig,
  type ModelTokenizer,
  tokenizerForModel,
  type TokenizerForModelOptions,
  tokenizerIdentity,
  tokenizerOfCheckpoint,
} from "./pretrained.ts";
export {
  loadQwen3Tokenizer,
  QWEN3_MODEL_VOCAB_SIZE,
  QWEN3_PAD_ID,
  QWEN3_TOKEN_COUNT,
  qwen3TokenizerPath,
} from "./qwen3.ts";

/**
 * Loads the tokenizer that `spec` names: "bytes", "qwen3", or a path to a tokenizer.json or to a
 * directory holding one. A missing or invalid file is a UserError.
 */
export async function loadTokenizer(spec: "bytes" | "qwen3" | string): Promise<Tokenizer> {
  if (spec === "bytes") return createBytesTokenizer();
  if (spec === "qwen3") return await loadQwen3Tokenizer();
  return await loadHfTokenizer(spec);
}
