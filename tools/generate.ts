/**
 * `deno task generate`: text from a checkpoint, with the KV cache (model/decode.ts), streamed as
 * it is generated.
 *
 *   deno task generate --model DIR (--prompt TEXT | --prompt-ids 1,2,3 | --prompts FILE.jsonl)
 *     [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S]
 *     [--tokenizer bytes|qwen3|PATH] [--chat] [--json] [--backend auto|webgpu|cpu]
 *
 * Greedy by default; --temperature T > 0 samples (seeded by --seed, default 0), and --top-k or
 * --top-p alone sample at temperature 1. A prompt's text streams to stdout as it is generated
 * (with --prompts, each prompt's text once its batch is done). With --json the last line is one
 * object, {"new_ids": [...], "text": "...", "tokens_per_s": x, "backend": "...", "device": "..."},
 * one such line per prompt for --prompts (the last lines, in file order). --chat wraps each text
 * prompt in the Qwen3 chat template and stops at <|im_end|>. Bad input prints one line and exits
 * with code 2.
 *
 * @module
 */
import { intFlag, parseFlags, runMain } from "./cli.ts";
import { UserError } from "../errors.ts";
import { parseBackend } from "../kernels/backend.ts";
import {
  generateWithCheckpoint,
  parsePromptIds,
  type PromptInput,
  readPromptsFile,
} from "../pipeline/generate.ts";
import type { SamplingOptions } from "../model/sampling.ts";

const USAGE =
  "deno task generate --model DIR (--prompt TEXT | --prompt-ids 1,2,3 | --prompts FILE.jsonl) " +
  "[--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S] " +
  "[--tokenizer bytes|qwen3|PATH] [--chat] [--json] [--backend auto|webgpu|cpu]";

/** A number flag within [min, max] (exclusive bounds where said), or a one-line error. */
function numberFlag(
  value: string,
  flag: string,
  o: { min: number; max?: number; minOpen?: boolean; integer?: boolean },
): number {
  const n = Number(value);
  const ok = value.trim() !== "" && Number.isFinite(n) &&
    (o.minOpen ? n > o.min : n >= o.min) && (o.max === undefined || n <= o.max) &&
    (!o.integer || Number.isInteger(n));
  if (!ok) {
    const range = `${o.minOpen ? `> ${o.min}` : `≥ ${o.min}`}${
      o.max !== undefined ? ` and ≤ ${o.max}` : ""
    }`;
    throw new UserError(
      `--${flag} must be ${o.integer ? "an integer" : "a number"} ${range}, got "${value}"`,
    );
  }
  return n;
}

if (import.meta.main) {
  await runMain("generate", async () => {
    const { values, positionals } = parseFlags(Deno.args, {
      model: { type: "string" },
      prompt: { type: "string" },
      "prompt-ids": { type: "string" },
      prompts: { type: "string" },
      "max-new-tokens": { type: "string" },
      temperature: { type: "string" },
      "top-k": { type: "string" },
      "top-p": { type: "string" },
      seed: { type: "string" },
      tokenizer: { type: "string" },
      chat: { type: "boolean" },
      json: { type: "boolean" },
      backend: { type: "string" },
    }, USAGE);
    if (positionals.length > 0) {
      throw new UserError(`unexpected argument "${positionals[0]}"; usage: ${USAGE}`);
    }
    if (!values.model) throw new UserError(`--model DIR is required; usage: ${USAGE}`);
    const given = [values.prompt, values["prompt-ids"], values.prompts].filter((v) =>
      v !== undefined
    );
    if (given.length !== 1) {
      throw new UserError(
        `give exactly one of --prompt TEXT, --prompt-ids 1,2,3 or --prompts FILE.jsonl; usage: ${USAGE}`,
      );
    }
    if (values["prompt-ids"] !== undefined && values.chat) {
      throw new UserError("--chat applies to text prompts; --prompt-ids are already tokens");
    }
    const backend = values.backend === undefined ? undefined : parseBackend(values.backend);
    const maxNewTokens = intFlag(values["max-new-tokens"], "max-new-tokens", 64);
    const sampled = values["top-k"] !== undefined || values["top-p"] !== undefined;
    const temperature = values.temperature === undefined
      ? (sampled ? 1 : 0)
      : numberFlag(values.temperature, "temperature", { min: 0 });
    if (temperature === 0 && sampled) {
      throw new UserError("--top-k and --top-p sample: give a --temperature above 0, or drop them");
    }
    const sampling: SamplingOptions = {
      temperature,
      topK: values["top-k"] === undefined
        ? 0
        : numberFlag(values["top-k"], "top-k", { min: 1, integer: true }),
      topP: values["top-p"] === undefined
        ? 1
        : numberFlag(values["top-p"], "top-p", { min: 0, minOpen: true, max: 1 }),
      seed: values.seed === undefined
        ? 0
        : numberFlag(values.seed, "seed", { min: 0, max: Number.MAX_SAFE_INTEGER, integer: true }),
    };
    const prompts: PromptInput[] = values.prompts !== undefined
      ? await readPromptsFile(values.prompts)
      : values.prompt !== undefined
      ? [{ text: values.prompt, source: "--prompt" }]
      : [{ ids: parsePromptIds(values["prompt-ids"]!), source: "--prompt-ids" }];
    const encoder = new TextEncoder();
    const write = (s: string) => Deno.stdout.writeSync(encoder.encode(s));
    const streaming = prompts.length === 1;
    let ended = true;
    const results = await generateWithCheckpoint(values.model, prompts, {
      maxNewTokens,
      sampling,
      tokenizer: values.tokenizer,
      chat: values.chat,
      backend,
      onText: streaming
        ? (_, text) => {
          write(text);
          ended = text.endsWith("\n");
        }
        : undefined,
    });
    if (!streaming) {
      for (const r of results) write(r.text.endsWith("\n") ? r.text : `${r.text}\n`);
    } else if (!ended) write("\n");
    if (values.json) { for (const r of results) write(JSON.stringify(r) + "\n"); }
  });
}
