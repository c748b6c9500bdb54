/**
 * `deno task eval`: score text or token ids with a Qwen3 checkpoint, printing exactly one JSON
 * object on stdout:
 * {"per_sample": [...], "fitness": F, "tokens": n, "tokens_per_s": x, "backend": "...", "device": "..."}.
 *
 *   deno task eval --model DIR --tokens FILE.json [--batch N]
 *   deno task eval --model DIR --text FILE [--tokenizer bytes|qwen3|PATH] [--max-len N] [--batch N]
 *
 * Text is read with the model's own tokenizer: the tokenizer.json its checkpoint carries (or the
 * one its state.json names). `--tokenizer` that names another one is an error unless
 * `--allow-tokenizer-change` (tokenizers/pretrained.ts tokenizerForModel).
 *
 * @module
 */
import { type CommandHelp, type DocumentedFlag, intFlag, parseFlags, runMain } from "./cli.ts";
import { UserError } from "../errors.ts";
import { parseBackend } from "../kernels/backend.ts";
import { evaluate, readTextSamples, readTokensFile } from "../pipeline/evaluate.ts";
import { openCheckpoint } from "../model/checkpoint.ts";
import { tokenizerForModel } from "../tokenizers/pretrained.ts";

/** eval's flags: the parser, the usage line and `--help` all come from this table. */
export const EVAL_FLAGS = {
  model: {
    type: "string",
    value: "DIR",
    help: "the checkpoint to score with (config.json, model.safetensors)",
    default: "required",
  },
  tokens: {
    type: "string",
    value: "FILE.json",
    help: 'token ids to score: {"input_ids": [[…]], "attention_mask": [[…]]}, right padded',
    default: "give this or --text",
  },
  text: {
    type: "string",
    value: "FILE",
    help: "a UTF-8 text file; each non-empty line is one sample",
    default: "give this or --tokens",
  },
  tokenizer: {
    type: "string",
    value: "bytes|qwen3|PATH",
    help: "how --text becomes ids; must be the model's own unless --allow-tokenizer-change",
    default: "the model's own (its tokenizer.json), else bytes for a vocab of 256",
  },
  "allow-tokenizer-change": {
    type: "boolean",
    help: "score with --tokenizer even though the model carries another tokenizer",
  },
  "max-len": {
    type: "string",
    value: "N",
    help: "score the first N tokens of each sample",
    default: "256 for --text; the longest row for --tokens",
  },
  batch: {
    type: "string",
    value: "N",
    help: "samples per forward pass (micro-batch)",
    default: "16",
  },
  backend: {
    type: "string",
    value: "auto|webgpu|cpu",
    help: "where the kernels run; auto: a real GPU's WebGPU, else the native CPU backend",
    default: "auto",
  },
  "shard-bytes": {
    type: "string",
    value: "BYTES",
    help: "largest tensor shard in bytes (tests force small shards)",
    default: "the device's binding limit",
  },
} satisfies Record<string, DocumentedFlag>;

/** What `deno task eval --help` says besides the flags. */
export const EVAL_HELP: CommandHelp = {
  command: "deno task eval",
  synopsis: "--model DIR (--tokens FILE.json | --text FILE [--tokenizer bytes|qwen3|PATH] " +
    "[--allow-tokenizer-change]) [--max-len N] [--batch N] [--backend auto|webgpu|cpu] " +
    "[--shard-bytes BYTES]",
  about: "Scores samples with a checkpoint: R = the mean log-probability of each next token, " +
    "per sample and their mean; prints one JSON object.",
  example: "deno task eval --model runs/tiny-austen/final --text notes.txt",
};

if (import.meta.main) {
  await runMain("eval", async () => {
    const { values } = parseFlags(Deno.args, EVAL_FLAGS, EVAL_HELP);
    const backend = values.backend === undefined ? undefined : parseBackend(values.backend);
    const usage = "see deno task eval --help";
    if (!values.model) throw new UserError(`--model DIR is required; ${usage}`);
    if (!values.tokens === !values.text) {
      throw new UserError(`give exactly one of --tokens FILE.json or --text FILE; ${usage}`);
    }
    if (values.tokens && (values.tokenizer || values["allow-tokenizer-change"])) {
      throw new UserError("--tokenizer applies to --text only; --tokens already holds ids");
    }
    if (values["allow-tokenizer-change"] && !values.tokenizer) {
      throw new UserError("--allow-tokenizer-change needs --tokenizer bytes|qwen3|PATH");
    }
    const maxLen = values["max-len"] === undefined
      ? undefined
      : intFlag(values["max-len"], "max-len", 0);
    if (maxLen !== undefined && maxLen < 2) {
      throw new UserError(
        `--max-len must be at least 2 (a token and the next one it predicts), got ${maxLen}`,
      );
    }
    const batch = intFlag(values.batch, "batch", 16);
    const shardBytes = values["shard-bytes"] === undefined
      ? undefined
      : intFlag(values["shard-bytes"], "shard-bytes", 0);
    if (shardBytes !== undefined && shardBytes < 16) {
      throw new UserError(
        `--shard-bytes is the largest tensor shard in bytes and must be at least 16 ` +
          `(one vec4 of f32), got ${shardBytes}`,
      );
    }
    let samples;
    if (values.tokens) samples = await readTokensFile(values.tokens);
    else {
      // The model's config first: a missing model dir is named before any text is read.
      const ckpt = await openCheckpoint(values.model);
      const vocabSize = ckpt.config.vocabSize;
      ckpt.close();
      const { tokenizer } = await tokenizerForModel(values.model, {
        tokenizer: values.tokenizer,
        allowChange: values["allow-tokenizer-change"],
        vocabSize,
      });
      samples = await readTextSamples(values.text!, { tokenizer, maxLen: maxLen ?? 256 });
    }
    const result = await evaluate(values.model, samples, {
      batch,
      maxLen,
      shardBytes,
      backend,
    });
    console.log(JSON.stringify(result));
  });
}
