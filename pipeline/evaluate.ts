/**
 * Scoring a checkpoint on a set of samples: the library behind `deno task eval`.
 *
 * Few shapes, so few compiles: every WebGPU pipeline is compiled for one (batch, T) shape, and
 * on lavapipe compiling is most of a first eval. So the samples are sorted by length, cut into
 * micro-batches of one row count, and each micro-batch's length is rounded up to a power of two
 * (at least 16, at most the longest row): a text file compiles one or two shapes, not one per
 * micro-batch. The forward is told how few times it will run, so each matmul's tile and the
 * attention's query block are the ones that compile and run soonest, not the fastest to run
 * (kernels/matmul.ts defaultMatmulTile). The LM head, nearly all of the work at a real
 * vocabulary, reads only the scored rows (no padding, no last positions), and on WebGPU comes in
 * as few vocabulary chunks as the binding limit allows, of equal width where it can (one
 * pipeline for all). Padding changes no score: padded positions are masked, rows are
 * independent, and the scored rows alone give the same bytes.
 *
 * @module
 */
import { UserError } from "../errors.ts";
import { padBatch } from "./batch.ts";
import { acquireDevice, type BackendChoice } from "../kernels/backend.ts";
import { destroyTensor } from "../kernels/tensor.ts";
import { openCheckpoint } from "../model/checkpoint.ts";
import { checkpointTensors, type DeviceWeights, uploadWeights } from "../model/device_weights.ts";
import { Qwen3Forward, type TokenBatch, validateBatch } from "../model/forward.ts";
import { loadTokenizer, type Tokenizer } from "../tokenizers/mod.ts";
import { checkWeightsFit } from "./limits.ts";
import { NO_TARGET, scoredTargets } from "../kernels/log_likelihood.ts";
import type { Device } from "../kernels/device.ts";
import type { Qwen3Config } from "../model/config.ts";

/** Samples to score: a right-padded batch, with where it came from for messages. */
export interface Samples {
  batch: TokenBatch;
  source: string;
  /** Tokenizer vocabulary size, when the samples came from text. */
  tokenizerVocab?: number;
  /** The id that pads rows (the tokenizer's); default 0. */
  padId?: number;
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
 * `tokenizer`: a tokenizer, or its name for {@link loadTokenizer} (bytes, qwen3, a path); the
 * model's own is tokenizers/pretrained.ts tokenizerForModel.
 */
export async function readTextSamples(
  path: string,
  options: { tokenizer: string | Tokenizer; maxLen: number },
): Promise<Samples> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch {
    throw new UserError(`${path}: cannot read the text file; check the path`);
  }
  const tok = typeof options.tokenizer === "string"
    ? await loadTokenizer(options.tokenizer)
    : options.tokenizer;
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
    padId: tok.padId,
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
      const shaped = shapedMicroBatches(batch, { micro, padId: samples.padId ?? 0 });
      const fwd = evalForward(gpu, config, weights, shaped);
      const perSample = new Array<number>(batch.inputIds.length);
      let tokens = 0;
      const t0 = performance.now();
      for (const mb of shaped) {
        const r = await fwd.score(mb.batch);
        mb.rows.forEach((row, i) => perSample[row] = r.perSample[i]);
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

/**
 * The micro-batches to score `batch` in, few shapes among them: rows sorted by length (longest
 * first), at most `micro` rows each and as even as that allows (filled up with masked rows of
 * padding where the count does not divide), each padded to a power of two ≥ 16 capped at the
 * longest row. Where that is one shape for all, the rows are dealt out so that each micro-batch
 * scores about as many tokens.
 * `rows` maps each micro-batch's real rows back to their place in `batch`.
 */
export function shapedMicroBatches(
  batch: TokenBatch,
  o: { micro: number; padId: number },
): { batch: TokenBatch; rows: number[] }[] {
  const lengths = batch.attentionMask.map((m) => m.lastIndexOf(1) + 1);
  const longest = Math.max(1, ...lengths);
  const order = lengths.map((_, i) => i).sort((a, b) => lengths[b] - lengths[a] || a - b);
  // As many micro-batches as `micro` rows each need, evened out: 30 rows at 16 are 2 × 15, not
  // 16 + 14 and 2 rows of filler (every filler row is a row of logits over the whole vocabulary).
  const size = Math.ceil(order.length / Math.ceil(order.length / Math.min(o.micro, order.length)));
  const groups: number[][] = [];
  for (let at = 0; at < order.length; at += size) groups.push(order.slice(at, at + size));
  const bucket = (rows: number[]) =>
    Math.min(longest, Math.max(16, 2 ** Math.ceil(Math.log2(lengths[rows[0]] || 1))));
  // One shape for all when that pads at most half again as many tokens as the buckets do.
  const bucketed = groups.reduce((a, g) => a + bucket(g), 0);
  const one = groups.length * longest <= 1.5 * bucketed;
  if (one && groups.length > 1) {
    // One shape: deal the rows out longest first, back and forth over the micro-batches, so each
    // scores about as many tokens (the LM head reads only the scored rows: evalForward).
    const g = groups.length;
    groups.forEach((rows) => rows.length = 0);
    order.forEach((row, i) => {
      const round = Math.floor(i / g), at = i % g;
      groups[round % 2 === 0 ? at : g - 1 - at].push(row);
    });
  }
  const out: { batch: TokenBatch; rows: number[] }[] = [];
  for (const rows of groups) {
    const T = one ? longest : bucket(rows);
    const pad = (r: readonly number[], v: number) => {
      const row = r.slice(0, T);
      while (row.length < T) row.push(v);
      return row;
    };
    const ids = rows.map((r) => pad(batch.inputIds[r], o.padId));
    const mask = rows.map((r) => pad(batch.attentionMask[r], 0));
    // Masked rows fill the last micro-batch up to the shape of the others; their R is dropped.
    while (ids.length < size) {
      ids.push(new Array(T).fill(o.padId));
      mask.push(new Array(T).fill(0));
    }
    out.push({ batch: { inputIds: ids, attentionMask: mask }, rows });
  }
  return out;
}

/**
 * The forward {@link evaluate} scores `shaped` with: sized for its largest micro-batch, its LM
 * head over the scored rows alone (ForwardOptions.scoredRows; padding costs no logits), on WebGPU
 * in {@link lmHeadChunk}s, and told how few times it runs, so each matmul's tile is the one that
 * compiles and runs soonest (kernels/matmul.ts defaultMatmulTile).
 */
export function evalForward(
  device: Device,
  config: Qwen3Config,
  weights: DeviceWeights,
  shaped: readonly { batch: TokenBatch }[],
): Qwen3Forward {
  const rows = Math.max(...shaped.map((m) => m.batch.inputIds.length));
  const seqLen = Math.max(2, ...shaped.map((m) => m.batch.inputIds[0].length));
  // The LM head reads the scored rows alone: as many as the micro-batch that scores the most.
  const scoredRows = Math.max(
    1,
    ...shaped.map((m) =>
      scoredTargets(m.batch.inputIds, m.batch.attentionMask, m.batch.inputIds[0].length)
        .filter((t) => t !== NO_TARGET).length
    ),
  );
  return new Qwen3Forward(device, config, weights, {
    maxBatch: rows,
    maxSeqLen: seqLen,
    ...(device.backend === "webgpu" ? { vocabChunk: lmHeadChunk(device, config, scoredRows) } : {}),
    runs: shaped.length,
    scoredRows,
  });
}

/**
 * The LM-head chunk for WebGPU: as few chunks as the binding limit allows, and of equal width
 * where a chunk count near that divides the vocabulary, since equal chunks share one matmul
 * pipeline where a narrower last chunk is a second one (on lavapipe a second compile, seconds
 * cold). At most 32768 columns: from 65536 on the WGSL head scores wrongly (R −10.1 for −12.09
 * on a 151,936-id model). A vocab of 151,936 = 2^7 · 1187 at 16 × 21 tokens: 8 chunks of 18,992.
 */
export function lmHeadChunk(device: Device, config: Qwen3Config, rows: number): number {
  const V = config.vocabSize;
  const fit = Math.max(1, Math.floor(device.limits.maxStorageBufferBindingSize / (rows * 4)));
  const least = Math.ceil(V / Math.min(V, fit, 32768));
  for (let chunks = least; chunks <= 2 * least; chunks++) {
    if (V % chunks === 0) return V / chunks;
  }
  return Math.ceil(V / least);
}

function truncate(b: TokenBatch, maxLen: number): TokenBatch {
  return {
    inputIds: b.inputIds.map((r) => r.slice(0, maxLen)),
    attentionMask: b.attentionMask.map((r) => r.slice(0, maxLen)),
  };
}
