/**
 * Scoring a checkpoint on a set of samples: the library behind `deno task eval`.
 *
 * @module
 */
import { UserError } from "./errors.ts";
import { padBatch, splitBatch } from "./batch.ts";
import { acquireDevice, type BackendChoice } from "../kernels/backend.ts";
import { destroyTensor } from "../kernels/tensor.ts";
import { openCheckpoint } from "../model/checkpoint.ts";
import { checkpointTensors, uploadWeights } from "../model/device_weights.ts";
import { Qwen3Forward, type TokenBatch, validateBatch } from "../model/forward.ts";
import { loadTokenizer } from "../tokenizers/mod.ts";
import { checkWeightsFit } from "./limits.ts";

/** Samples to score: a right-padded batch, with where it came from for messages. */
export interface Samples {
  batch: TokenBatch;
  source: string;
  /** Tokenizer vocabulary size, when the samples came from text. */
  tokenizerVocab?: number;
}

/** What `deno task eval` prints. */
export interface EvalResult {
  per_sample: number[];
  fitness: number;
  tokens: number;
  tokens_per_s: number;
  /** The backend that ran it: webgpu or cpu. */
  backend: string;
  /** The device: the adapter's name, or the CPU with its threads and BLAS. */
  device: string;
}

/**
 * Reads {"input_ids": [[...]], "attention_mask": [[...]]} (right-padded, as HF tokenizers emit).
 * Every fault is a one-line UserError naming the file.
 */
export async function readTokensFile(path: string): Promise<Samples> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch {
    throw new UserError(`${path}: cannot read the tokens file; check the path`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new UserError(`${path}: not valid JSON (${(e as Error).message.split("\n")[0]})`);
  }
  const j = json as { input_ids?: unknown; attention_mask?: unknown };
  if (!j || typeof j !== "object" || !Array.isArray(j.input_ids)) {
    throw new UserError(`${path}: expected {"input_ids": [[...]], "attention_mask": [[...]]}`);
  }
  const ids = j.input_ids as number[][];
  const mask = Array.isArray(j.attention_mask)
    ? j.attention_mask as number[][]
    : ids.map((r) => (Array.isArray(r) ? r.map(() => 1) : r));
  if (ids.length === 0) {
    throw new UserError(`${path}: input_ids is empty; give at least one sample`);
  }
  return { batch: { inputIds: ids, attentionMask: mask }, source: path };
}

/**
 * Reads a UTF-8 text file as samples, one per non-empty line, tokenized and truncated to
 * `maxLen` tokens. Lines of fewer than two tokens have no next token to score and are skipped.
 */
export async function readTextSamples(
  path: string,
  options: { tokenizer: string; maxLen: number },
): Promise<Samples> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch {
    throw new UserError(`${path}: cannot read the text file; check the path`);
  }
  const tok = await loadTokenizer(options.tokenizer);
  const seqs = text.split(/\r?\n/).filter((l) => l.trim().length > 0)
    .map((l) => tok.encode(l).slice(0, options.maxLen))
    .filter((s) => s.length >= 2);
  if (seqs.length === 0) {
    throw new UserError(
      `${path}: no line has two or more tokens to score; give a non-empty text file`,
    );
  }
  return {
    batch: padBatch(seqs, { padId: tok.padId }),
    source: path,
    tokenizerVocab: tok.vocabSize,
  };
}

/** Scores `samples` with the checkpoint in `modelDir`, in micro-batches of `batch`. */
export async function evaluate(
  modelDir: string,
  samples: Samples,
  options: { batch?: number; maxLen?: number; shardBytes?: number; backend?: BackendChoice } = {},
): Promise<EvalResult> {
  const ckpt = await openCheckpoint(modelDir);
  try {
    const config = ckpt.config;
    if (samples.tokenizerVocab !== undefined && samples.tokenizerVocab > config.vocabSize) {
      throw new UserError(
        `${samples.source}: the tokenizer has ${samples.tokenizerVocab} ids but the model in ${modelDir} ` +
          `has vocab_size ${config.vocabSize}; use the model's own tokenizer`,
      );
    }
    validateBatch(samples.batch, {
      vocabSize: config.vocabSize,
      maxSeqLen: Infinity,
      source: samples.source,
    });
    const positions = config.maxPositionEmbeddings;
    if (options.maxLen !== undefined && options.maxLen > positions) {
      throw new UserError(
        `--max-len ${options.maxLen} exceeds the max_position_embeddings ${positions} of ` +
          `${modelDir}/config.json; use --max-len ${positions} or less`,
      );
    }
    const lengths = samples.batch.inputIds.map((r) => r.length);
    const longest = Math.max(...lengths);
    const maxLen = options.maxLen ?? longest;
    if (maxLen > positions) {
      const row = lengths.findIndex((n) => n > positions);
      throw new UserError(
        `${samples.source}: row ${row} has ${lengths[row]} tokens, more than the ` +
          `max_position_embeddings ${positions} of ${modelDir}/config.json; shorten it, or pass ` +
          `--max-len ${positions} to score the first ${positions} tokens of each row`,
      );
    }
    // Right padding only: a 0 before a 1 would score tokens the model never saw in context.
    samples.batch.attentionMask.forEach((m, b) => {
      const hole = m.findIndex((v, t) => v === 0 && m.slice(t + 1).includes(1));
      if (hole >= 0) {
        throw new UserError(
          `${samples.source}: row ${b}: attention_mask has a 0 at position ${hole} before a 1; ` +
            `esflow scores right-padded rows (1s, then 0s): drop the masked tokens or move the padding to the end`,
        );
      }
    });
    const batch = truncate(samples.batch, maxLen);
    batch.attentionMask.forEach((m, b) => {
      if (m.slice(1).every((v) => v === 0)) {
        throw new UserError(
          `${samples.source}: row ${b} has no scored target token (it needs at least two real tokens)`,
        );
      }
    });
    const gpu = await acquireDevice({ shardBytes: options.shardBytes, backend: options.backend });
    try {
      checkWeightsFit(config, { backend: gpu.backend, source: `${modelDir}/config.json` });
      const weights = await uploadWeights(gpu, checkpointTensors(ckpt));
      const micro = options.batch ?? 16;
      const fwd = new Qwen3Forward(gpu, config, weights, {
        maxBatch: Math.min(micro, batch.inputIds.length),
        maxSeqLen: Math.max(2, Math.min(maxLen, longest)),
      });
      const perSample: number[] = [];
      let tokens = 0;
      const t0 = performance.now();
      for (const mb of splitBatch(batch, micro)) {
        const r = await fwd.score(mb);
        perSample.push(...r.perSample);
        tokens += r.tokens;
      }
      const seconds = (performance.now() - t0) / 1000;
      const bad = perSample.findIndex((r) => !Number.isFinite(r));
      if (bad >= 0) {
        throw new UserError(
          `${modelDir}: the model's score of row ${bad} of ${samples.source} is not finite ` +
            `(${
              perSample[bad]
            }); its weights overflow f32 on this input: use an earlier checkpoint`,
        );
      }
      fwd.destroy();
      for (const t of weights.values()) destroyTensor(gpu, t);
      return {
        per_sample: perSample,
        fitness: perSample.reduce((a, b) => a + b, 0) / perSample.length,
        tokens,
        tokens_per_s: tokens / seconds,
        backend: gpu.backend,
        device: gpu.name,
      };
    } finally {
      gpu.destroy();
    }
  } finally {
    ckpt.close();
  }
}

function truncate(b: TokenBatch, maxLen: number): TokenBatch {
  return {
    inputIds: b.inputIds.map((r) => r.slice(0, maxLen)),
    attentionMask: b.attentionMask.map((r) => r.slice(0, maxLen)),
  };
}
