/**
 * {@link loadTokenizer}: a tokenizer by name or path. Its own module so that pretrained.ts,
 * which tokenizers/mod.ts re-exports, can use it without an import cycle.
 *
 * @module
 */
import { createBytesTokenizer } from "./bytes.ts";
import type { Tokenizer } from "./tokenizer.ts";
import { loadHfTokenizer } from "./hf.ts";
import { loadQwen3Tokenizer } from "./qwen3.ts";

/**
 * Loads the tokenizer that `spec` names: "bytes", "qwen3", or a path to a tokenizer.json or to a
 * directory holding one. A missing or invalid file is a UserError.
 */
export async function loadTokenizer(spec: "bytes" | "qwen3" | string): Promise<Tokenizer> {
  if (spec === "bytes") return createBytesTokenizer();
  if (spec === "qwen3") return await loadQwen3Tokenizer();
  return await loadHfTokenizer(spec);
}
