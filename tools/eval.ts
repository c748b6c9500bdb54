/**
 * `deno task eval`: score text or token ids with a Qwen3 checkpoint on WebGPU, printing exactly
 * one JSON object on stdout:
 * {"per_sample": [...], "fitness": F, "tokens": n, "tokens_per_s": x, "backend": "...", "device": "..."}.
 *
 *   deno task eval --model DIR --tokens FILE.json [--batch N]
 *   deno task eval --model DIR --text FILE [--tokenizer bytes|qwen3|PATH] [--max-len N] [--batch N]
 *
 * @module
 */
import { intFlag, parseFlags, runMain } from "./cli.ts";
import { UserError } from "../pipeline/errors.ts";
import { parseBackend } from "../kernels/backend.ts";
import { evaluate, readTextSamples, readTokensFile } from "../pipeline/evaluate.ts";

const USAGE =
  "deno task eval --model DIR (--tokens FILE.json | --text FILE [--tokenizer bytes|qwen3|PATH]) " +
  "[--max-len N] [--batch N] [--backend auto|webgpu|cpu]";

if (import.meta.main) {
  await runMain("eval", async () => {
    const { values } = parseFlags(Deno.args, {
      model: { type: "string" },
      tokens: { type: "string" },
      text: { type: "string" },
      tokenizer: { type: "string" },
      "max-len": { type: "string" },
      batch: { type: "string" },
      "shard-bytes": { type: "string" },
      backend: { type: "string" },
    }, USAGE);
    const backend = values.backend === undefined ? undefined : parseBackend(values.backend);
    if (!values.model) throw new UserError(`--model DIR is required; usage: ${USAGE}`);
    if (!values.tokens === !values.text) {
      throw new UserError(`give exactly one of --tokens FILE.json or --text FILE; usage: ${USAGE}`);
    }
    if (values.tokens && values.tokenizer) {
      throw new UserError("--tokenizer applies to --text only; --tokens already holds ids");
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
    const samples = values.tokens
      ? await readTokensFile(values.tokens)
      : await readTextSamples(values.text!, {
        tokenizer: values.tokenizer ?? "bytes",
        maxLen: maxLen ?? 256,
      });
    const result = await evaluate(values.model, samples, {
      batch,
      maxLen,
      shardBytes,
      backend,
    });
    console.log(JSON.stringify(result));
  });
}
