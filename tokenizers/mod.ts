/**
 * Tokenizers: text to token ids and back. {@link loadTokenizer} takes "bytes" (built in, 256 ids),
 * "qwen3" (the real Qwen3 vocabulary, shipped in npm) or the path of a Hugging Face
 * tokenizer.json.
 *
 * @module
 */

export { loadTokenizer } from "./load.ts";
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
