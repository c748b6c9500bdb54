/**
 * The Qwen3 forward pass in WGSL, exactly as HF transformers computes it, ending in the paper's
 * log-likelihood fitness. The forward is built once per (batch, seqLen) as a flat list of
 * {@link Step}s over fixed buffers, then encoded and submitted whole: one submit, one readback.
 *
 * Legend: B = batch, T = tokens per sample, R = B·T rows, H = hidden, NH = heads, NKV = kv heads,
 * D = head_dim, I = intermediate, V = vocab, C = vocab chunk.
 *
 * Per layer (pre-norm):
 *   xn = rmsnorm(x, input_layernorm)
 *   q, k, v = xn·Wqᵀ (+bq), xn·Wkᵀ (+bk), xn·Wvᵀ (+bv)
 *   q, k = rope(q_norm(q)), rope(k_norm(k))          per head, half-split
 *   a = attention(q, k, v; causal, key padding, GQA)
 *   x += a·Woᵀ (+bo)                                  residual fused into the matmul
 *   xn = rmsnorm(x, post_attention_layernorm)
 *   g = silu(xn·Wgᵀ)·(xn·Wuᵀ)                        one fused matmul (kernels/matmul.ts)
 *   x += g·Wdᵀ
 * then xn = rmsnorm(x, norm) and, per vocab chunk, logits = xn·W_headᵀ folded into an online
 * log-sum-exp; finally R_b = mean over scored targets of log p(target).
 *
 * @module
 */
import type { Qwen3Config } from "./config.ts";
import { type Device, type DeviceBuffer, DeviceError, staged } from "../kernels/device.ts";
import { type DeviceTensor, fillsOf, readShardPairs, readShards } from "../kernels/tensor.ts";
import type { Step } from "../kernels/program.ts";
import { linearSteps, matmulStep, swigluLinearSteps } from "../kernels/matmul.ts";
import { rmsnormStep } from "../kernels/rmsnorm.ts";
import { qkNormRopeStep, ropeTables } from "../kernels/qk_norm_rope.ts";
import { attentionStep, defaultQueryBlock } from "../kernels/attention.ts";
import { embeddingSteps } from "../kernels/embedding.ts";
import {
  compactTargets,
  logLikelihoodStep,
  logsumexpChunkStep,
  scoredTargets,
} from "../kernels/log_likelihood.ts";
import { UserError } from "../errors.ts";
import type { DeviceWeights } from "./device_weights.ts";

/** Sets `name` as the role of each op that has none (fills keep their own: "form chunk"). */
function role(name: string, ops: Step[]): Step[] {
  for (const op of ops) op.role ??= name;
  return ops;
}

/** A right-padded batch of token ids, as HF's tokenizer output (and tests' tokens.json). */
export interface TokenBatch {
  inputIds: number[][];
  attentionMask: number[][];
}

/** Options for {@link Qwen3Forward}. */
export interface ForwardOptions {
  /** Most samples per call. */
  maxBatch: number;
  /** Most tokens per sample. */
  maxSeqLen: number;
  /** Vocab columns per LM-head chunk; default the largest of ≤ 8192 that fits the binding limit. */
  vocabChunk?: number;
  /**
   * Keep a full (R, V) logits buffer for {@link Qwen3Forward.logits}. For tests and debugging
   * only: this is exactly the buffer the streamed fitness avoids.
   */
  debugLogits?: boolean;
  /**
   * How many times the caller will run the forward, e.g. eval's micro-batches. Given, each
   * matmul's default tile weighs its cold compile time against its run time over that many
   * calls (on lavapipe a big tile takes seconds to compile: kernels/matmul.ts
   * defaultMatmulTile); default: as many as a training run, speed alone.
   */
  runs?: number;
  /**
   * Run the LM head over the scored rows alone (those with a next token to score), gathered into
   * a block of this many rows, at least the most any batch scores: padding and each row's last
   * position then cost no logits, which at a vocabulary of 151,936 are nearly all of a text
   * eval's work. The scores are the same bytes. One member per dispatch only. Default 0: the
   * head reads every row.
   */
  scoredRows?: number;
}

/** The result of scoring a batch. */
export interface ScoreResult {
  /** R(x;θ) of each sample. */
  perSample: number[];
  /** Scored target tokens in the batch. */
  tokens: number;
}

/** The tensor bound for each weight by HF name: θ itself, or a member's perturbed tensors. */
export type TensorLookup = (name: string) => DeviceTensor;

/** A read of a weight matrix as a linear layer: out (+)= x·Wᵀ (+ bias). */
export interface LinearRead {
  label: string;
  /** (members·m, k). */
  x: DeviceBuffer;
  /** Token rows per member. */
  m: number;
  k: number;
  /** (members·m, W's rows). */
  out: DeviceBuffer;
  accumulate?: boolean;
  /** The bias vector's name, when the layer has one. */
  bias?: string;
  /** Members in the same dispatches (population batching). */
  members: number;
  /** Expected runs of the read's pipelines (calls × layers); default a training run's many. */
  runs?: number;
}

/** A read of the MLP's gate and up projections: out = silu(x·Wgᵀ)·(x·Wuᵀ). */
export interface GateUpRead {
  /** The layer's label prefix, e.g. "L3". */
  layer: string;
  gate: string;
  up: string;
  x: DeviceBuffer;
  m: number;
  k: number;
  out: DeviceBuffer;
  members: number;
  /** (members·m, I): room for the up projection where it cannot be fused (made on first use). */
  upScratch: () => DeviceBuffer;
  /** Expected runs of the read's pipelines, as in {@link LinearRead}. */
  runs?: number;
}

/** A read of the embedding table as a gather: x = E[ids]. */
export interface GatherRead {
  label: string;
  ids: DeviceBuffer;
  x: DeviceBuffer;
  m: number;
  /** Width of a row of x. */
  hidden: number;
  members: number;
}

/** A read of the LM head in vocab pieces of at most `chunk` columns. */
export interface HeadRead {
  x: DeviceBuffer;
  m: number;
  k: number;
  /** (members·m, chunk): one piece's logits. */
  logits: DeviceBuffer;
  chunk: number;
  members: number;
  /** Expected calls of the forward; every chunk's matmul shares one pipeline where it can. */
  runs?: number;
}

/**
 * How the forward reads its weights: one hook per kind of read. The forward asks for "x·Wᵀ into
 * out" and the source decides how W is had — θ as stored, a member's whole perturbed copy, row
 * chunks formed right before each is read, or θ plus a low-rank correction (pipeline/scratch.ts)
 * — so the forward itself has no branch per scratch mode.
 */
export interface WeightLookup {
  /** A vector (a norm's weight, a bias): the tensor to bind, and what must run before reading it. */
  vector(name: string): { tensor: DeviceTensor; before: Step[] };
  linear(name: string, o: LinearRead): Step[];
  gateUp(o: GateUpRead): Step[];
  gather(name: string, o: GatherRead): Step[];
  /** Per piece of vocab columns [start, start + n): its logits, then `fold(start, n)`. */
  head(name: string, o: HeadRead, fold: (start: number, n: number) => Step[]): Step[];
}

/**
 * The weight reads of a set of tensors, as they are bound: θ as stored, or a member's perturbed
 * copy. A tensor with fills (kernels/tensor.ts FilledTensor: row chunks formed just before they
 * are read) is read piece by piece after each piece's fill; a tensor with a member stride is read
 * by each batched member at its own copy.
 */
export function tensorReads(device: Device, lookup: TensorLookup): WeightLookup {
  const ms = (t: DeviceTensor) => t.memberStride ?? 0;
  const vector = (name: string) => {
    const tensor = lookup(name);
    if (tensor.shards.length !== 1) throw new Error(`${name}: a vector must be one shard`);
    return { tensor, before: fillsOf(tensor)?.[0] ?? [] };
  };
  return {
    vector,
    linear(name, o) {
      const w = lookup(name);
      const bias = o.bias ? vector(o.bias) : undefined;
      return [
        ...(bias?.before ?? []),
        ...readShards(w, (view) =>
          linearSteps(device, {
            label: o.label,
            x: o.x,
            m: o.m,
            k: o.k,
            w: view,
            bias: bias?.tensor,
            out: o.out,
            accumulate: o.accumulate,
            members: { count: o.members, w: ms(w), bias: bias ? ms(bias.tensor) : 0 },
            runs: o.runs,
          })),
      ];
    },
    gateUp(o) {
      const gate = lookup(o.gate), up = lookup(o.up);
      // gate = silu(xn·Wgᵀ)·(xn·Wuᵀ) in one pass: the two blocks share their loads of xn.
      return readShardPairs(gate, up, (gv, uv) =>
        swigluLinearSteps(device, {
          label: `${o.layer}.mlp.gate_up_swiglu`,
          x: o.x,
          m: o.m,
          k: o.k,
          gate: gv,
          up: uv,
          out: o.out,
          members: { count: o.members, w: ms(gate) },
          runs: o.runs,
        }));
    },
    gather(name, o) {
      const table = lookup(name);
      return readShards(table, (view) =>
        embeddingSteps(device, {
          label: o.label,
          ids: o.ids,
          table: view,
          x: o.x,
          rows: o.members * o.m,
          members: { rows: o.m, tableStride: ms(table) },
        }));
    },
    head(name, o, fold) {
      const head = lookup(name), fills = fillsOf(head), steps: Step[] = [];
      const chunks = head.shards.reduce((a, s) => a + Math.ceil(s.rows / o.chunk), 0);
      for (const [i, shard] of head.shards.entries()) {
        if (fills) steps.push(...fills[i]);
        for (let c0 = 0; c0 < shard.rows; c0 += o.chunk) {
          const n = Math.min(o.chunk, shard.rows - c0), start = shard.rowStart + c0;
          steps.push(
            ...role("lm_head", [matmulStep(device, {
              label: `lm_head[${start}:${start + n}]`,
              x: o.x,
              // Members with their own head: one dispatch, member z in grid z; shared: all rows.
              m: head.memberStride ? o.m : o.members * o.m,
              k: o.k,
              w: shard.buffer,
              wRowOffset: c0,
              n,
              out: o.logits,
              members: head.memberStride
                ? { count: o.members, x: o.m * o.k, w: head.memberStride, out: o.m * n }
                : undefined,
              runs: (o.runs ?? Infinity) * chunks,
            })]),
            ...fold(start, n),
          );
        }
      }
      return steps;
    },
  };
}

/** Validates a batch against a config; every fault is a one-line {@link UserError}. */
export function validateBatch(
  batch: TokenBatch,
  o: { vocabSize: number; maxSeqLen: number; source?: string },
): void {
  const src = o.source ? `${o.source}: ` : "";
  const { inputIds: ids, attentionMask: mask } = batch;
  if (!Array.isArray(ids) || ids.length === 0) throw new UserError(`${src}input_ids is empty`);
  if (!Array.isArray(mask) || mask.length !== ids.length) {
    throw new UserError(
      `${src}input_ids has ${ids.length} rows but attention_mask has ${mask?.length ?? 0}`,
    );
  }
  ids.forEach((row, b) => {
    if (!Array.isArray(row) || !Array.isArray(mask[b]) || row.length !== mask[b].length) {
      throw new UserError(
        `${src}row ${b}: input_ids and attention_mask have different lengths ` +
          `(${row?.length} and ${mask[b]?.length}); they must match`,
      );
    }
    if (row.length > o.maxSeqLen) {
      throw new UserError(
        `${src}row ${b} has ${row.length} tokens, more than max length ${o.maxSeqLen}`,
      );
    }
    row.forEach((id, t) => {
      if (!Number.isInteger(id) || id < 0 || id >= o.vocabSize) {
        throw new UserError(
          `${src}row ${b}, position ${t}: token id ${id} is outside the model's vocabulary ` +
            `[0, ${o.vocabSize}); use the tokenizer the model was trained with`,
        );
      }
      const m = mask[b][t];
      if (m !== 0 && m !== 1) {
        throw new UserError(
          `${src}row ${b}, position ${t}: attention_mask value ${m} must be 0 or 1`,
        );
      }
    });
  });
}

/**
 * A Qwen3 forward + fitness over fixed device buffers sized for (maxBatch, maxSeqLen).
 * Steps are built lazily per (batch, seqLen) and cached.
 */
export class Qwen3Forward {
  readonly device: Device;
  readonly config: Qwen3Config;
  readonly options: Required<ForwardOptions>;
  readonly vocabChunk: number;
  #weights: WeightLookup;
  /** The tensors behind the default reads, when they were given as tensors. */
  #tensors?: TensorLookup;
  #buf: Record<string, DeviceBuffer> = {};
  #steps = new Map<string, Step[]>();

  constructor(
    device: Device,
    config: Qwen3Config,
    weights: DeviceWeights | TensorLookup | WeightLookup,
    options: ForwardOptions,
  ) {
    this.device = device;
    this.config = config;
    if (weights instanceof Map) {
      this.#tensors = (name) => {
        const t = weights.get(name);
        if (!t) throw new DeviceError(`weight ${name} is not on the device`);
        return t;
      };
    } else if (typeof weights === "function") this.#tensors = weights;
    this.#weights = this.#tensors ? tensorReads(device, this.#tensors) : weights as WeightLookup;
    const c = config;
    const rows = options.maxBatch * options.maxSeqLen;
    // Activations are whole buffers: they answer to the adapter's real binding limit, not to the
    // (possibly smaller, forced) weight shard size.
    const binding = device.limits.maxStorageBufferBindingSize;
    const scoredRows = options.scoredRows ?? 0;
    if (!(Number.isInteger(scoredRows) && scoredRows >= 0 && scoredRows <= rows)) {
      throw new Error(`scoredRows must be an integer in [0, ${rows}], got ${scoredRows}`);
    }
    // The rows the LM head reads: every row, or the gathered scored ones.
    const headRows = scoredRows || rows;
    const fit = Math.floor(binding / (headRows * 4));
    const chunk = Math.min(options.vocabChunk ?? 8192, c.vocabSize, fit);
    if (chunk < 1) {
      throw new UserError(
        `a batch of ${options.maxBatch}×${options.maxSeqLen} tokens is too large for one LM-head chunk ` +
          `on ${device.name}; lower the micro-batch or max length`,
      );
    }
    this.vocabChunk = chunk;
    this.options = {
      vocabChunk: chunk,
      debugLogits: options.debugLogits ?? false,
      runs: options.runs ?? Infinity,
      scoredRows,
      maxBatch: options.maxBatch,
      maxSeqLen: options.maxSeqLen,
    };
    const H = c.hiddenSize, D = c.headDim, I = c.intermediateSize;
    const sizes: Record<string, number> = {
      ids: rows * 4,
      mask: rows * 4,
      target: rows * 4,
      x: rows * H * 4,
      xn: rows * H * 4,
      q: rows * c.numHeads * D * 4,
      k: rows * c.numKvHeads * D * 4,
      v: rows * c.numKvHeads * D * 4,
      attn: rows * c.numHeads * D * 4,
      gate: rows * I * 4,
      logits: headRows * chunk * 4,
      state: rows * 3 * 4,
      r: options.maxBatch * 4,
      cos: options.maxSeqLen * (D / 2) * 4,
      sin: options.maxSeqLen * (D / 2) * 4,
    };
    if (this.options.debugLogits) sizes.fullLogits = rows * c.vocabSize * 4;
    if (scoredRows) {
      // The scored rows' hidden states, which rows they are and their targets.
      Object.assign(sizes, {
        xs: scoredRows * H * 4,
        rowOf: scoredRows * 4,
        targetOf: scoredRows * 4,
      });
    }
    // The up projection's own buffer is only for low-rank members (the fused MLP matmul never
    // writes it): allocated on first use, by #upBuffer.
    this.#upBytes = rows * I * 4;
    for (const [name, bytes] of Object.entries(sizes)) {
      if (bytes > binding) {
        throw new UserError(
          `activation ${name} needs ${bytes} bytes for ${options.maxBatch}×${options.maxSeqLen} tokens, ` +
            `over the ${binding}-byte binding limit of ${device.name}; lower the micro-batch or max length`,
        );
      }
      this.#buf[name] = device.createBuffer(`act.${name}`, bytes, "activations");
    }
    // Position p's angles sit at row p whatever the batch's length, so one table serves all.
    const t = ropeTables({ seqLen: options.maxSeqLen, headDim: D, theta: c.ropeTheta });
    device.write(this.#buf.cos, t.cos);
    device.write(this.#buf.sin, t.sin);
  }

  #upBytes: number;

  /**
   * The up projection's output, allocated the first time a low-rank MLP needs it (the size of
   * gate, whose fit to the binding limit the constructor checked).
   */
  #upBuffer(): DeviceBuffer {
    this.#buf.up ??= this.device.createBuffer("act.up", this.#upBytes, "activations");
    return this.#buf.up;
  }

  /** Bytes of activation workspace this forward allocated. */
  get workspaceBytes(): number {
    return Object.values(this.#buf).reduce((a, b) => a + b.size, 0);
  }

  /** The device buffer of an activation, by name (x, xn, q, k, v, attn, gate, up, r, …). */
  buffer(name: string): DeviceBuffer {
    return this.#buf[name];
  }

  /**
   * Steps of the body: embedding, layers and final norm, leaving the normed states in xn.
   * `weights` reads another set of tensors of the same shapes (a member's) instead.
   * `layers` runs part of it: the embedding only when `from` is 0, layers [from, to), and the
   * final norm only when `to` is the last layer — the residual stream x carries between parts.
   * `members` > 1 runs that many members at once (population batching): the buffers hold
   * `members` blocks of batch × seqLen rows (the same tokens in each), each member reading its
   * own weights (see {@link WeightLookup}).
   */
  bodySteps(
    batch: number,
    seqLen: number,
    weights: WeightLookup = this.#weights,
    layers: { from: number; to: number } = { from: 0, to: this.config.numLayers },
    members = 1,
  ): Step[] {
    const c = this.config, g = this.device, b = this.#buf;
    const Rm = batch * seqLen, R = members * Rm, H = c.hiddenSize, D = c.headDim;
    const ms = (t: DeviceTensor) => t.memberStride ?? 0;
    // A vector is read whole from its one buffer, after what must run first (bf16 θ widened to
    // f32 right before the read: pipeline/scratch.ts).
    const vec = (
      name: string,
      read: (buffer: DeviceBuffer, memberStride: number) => Step,
    ): Step[] => {
      const v = weights.vector(name);
      return [...v.before, read(v.tensor.shards[0].buffer, ms(v.tensor))];
    };
    // xn = rmsnorm(x): every norm of the body reads the residual stream and writes xn.
    const norm = (label: string, weight: string) =>
      role(
        "norm",
        vec(weight, (w, stride) =>
          rmsnormStep(g, {
            label,
            x: b.x,
            w,
            y: b.xn,
            rows: R,
            dim: H,
            eps: c.rmsNormEps,
            members: { rows: Rm, wStride: stride },
          })),
      );
    const steps: Step[] = [];
    if (layers.from === 0) {
      steps.push(...role(
        "embed",
        weights.gather("model.embed_tokens.weight", {
          label: "embed",
          ids: b.ids,
          x: b.x,
          m: Rm,
          hidden: H,
          members,
        }),
      ));
    }
    for (let l = layers.from; l < layers.to; l++) {
      const p = `model.layers.${l}.`;
      const lin = (
        name: string,
        x: DeviceBuffer,
        out: DeviceBuffer,
        k: number,
        accumulate = false,
      ) =>
        role(
          "projection",
          weights.linear(`${p}${name}.weight`, {
            label: `L${l}.${name}`,
            x,
            m: Rm,
            k,
            out,
            accumulate,
            bias: c.attentionBias && name.startsWith("self_attn.") ? `${p}${name}.bias` : undefined,
            members,
            runs: this.options.runs * c.numLayers,
          }),
        );
      steps.push(...norm(`L${l}.input_layernorm`, `${p}input_layernorm.weight`));
      steps.push(...lin("self_attn.q_proj", b.xn, b.q, H));
      steps.push(...lin("self_attn.k_proj", b.xn, b.k, H));
      steps.push(...lin("self_attn.v_proj", b.xn, b.v, H));
      for (const [which, heads] of [["q", c.numHeads], ["k", c.numKvHeads]] as const) {
        steps.push(
          ...role(
            "qk_norm_rope",
            vec(`${p}self_attn.${which}_norm.weight`, (w, stride) =>
              qkNormRopeStep(g, {
                label: `L${l}.${which}_norm_rope`,
                x: b[which],
                w,
                cos: b.cos,
                sin: b.sin,
                rows: R,
                seqLen,
                heads,
                headDim: D,
                eps: c.rmsNormEps,
                members: { rows: Rm, wStride: stride },
              })),
          ),
        );
      }
      const shape = {
        batch: members * batch,
        seqLen,
        heads: c.numHeads,
        kvHeads: c.numKvHeads,
        headDim: D,
      };
      steps.push(...role("attention", [attentionStep(g, {
        label: `L${l}.attention`,
        q: b.q,
        k: b.k,
        v: b.v,
        mask: b.mask,
        out: b.attn,
        ...shape,
        queryBlock: defaultQueryBlock(g, shape, this.options.runs * c.numLayers),
      })]));
      steps.push(...lin("self_attn.o_proj", b.attn, b.x, c.numHeads * D, true));
      steps.push(...norm(`L${l}.post_attention_layernorm`, `${p}post_attention_layernorm.weight`));
      steps.push(...role(
        "mlp",
        weights.gateUp({
          layer: `L${l}`,
          gate: `${p}mlp.gate_proj.weight`,
          up: `${p}mlp.up_proj.weight`,
          x: b.xn,
          m: Rm,
          k: H,
          out: b.gate,
          members,
          upScratch: () => this.#upBuffer(),
          runs: this.options.runs * c.numLayers,
        }),
      ));
      steps.push(...lin("mlp.down_proj", b.gate, b.x, c.intermediateSize, true));
    }
    if (layers.to === c.numLayers) steps.push(...norm("norm", "model.norm.weight"));
    return staged("model", steps);
  }

  /** The LM head's name: embed_tokens when tied. */
  get headName(): string {
    return this.config.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  }

  /**
   * Steps of the streamed fitness: per vocab chunk a matmul and a log-sum-exp fold, then R.
   * `members` as in {@link bodySteps}: r then holds members × batch values, member by member.
   * With `scoredRows` the scored rows of xn are gathered first and the head reads those alone.
   */
  fitnessSteps(
    batch: number,
    seqLen: number,
    weights: WeightLookup = this.#weights,
    members = 1,
  ): Step[] {
    const c = this.config, g = this.device, b = this.#buf;
    const Rm = batch * seqLen, R = members * Rm, S = this.options.scoredRows;
    if (S && members !== 1) {
      throw new Error("scoredRows reads one member's rows, not batched members");
    }
    // The scored rows of xn, gathered as an embedding lookup with xn as the table.
    const rows = this.options.maxBatch * this.options.maxSeqLen, H = c.hiddenSize;
    const gather = S
      ? role(
        "gather_scored",
        embeddingSteps(g, {
          label: "gather_scored",
          ids: b.rowOf,
          table: {
            name: "act.xn",
            shape: [rows, H],
            rowSize: H,
            shards: [{ buffer: b.xn, rowStart: 0, rows }],
          },
          x: b.xs,
          rows: S,
        }),
      )
      : [];
    let first = true;
    const steps: Step[] = [
      ...gather,
      ...weights.head(this.headName, {
        x: S ? b.xs : b.xn,
        m: S || Rm,
        k: c.hiddenSize,
        logits: b.logits,
        chunk: this.vocabChunk,
        members,
        runs: this.options.runs,
      }, (start, n) => {
        const fold = role("logsumexp", [logsumexpChunkStep(g, {
          label: `logsumexp[${start}]`,
          logits: b.logits,
          target: S ? b.targetOf : b.target,
          state: b.state,
          rows: S || R,
          width: n,
          start,
          first,
        })]);
        first = false;
        return fold;
      }),
    ];
    steps.push(...role("log_likelihood", [
      logLikelihoodStep(g, {
        label: "log_likelihood",
        target: b.target,
        state: b.state,
        r: b.r,
        batch: members * batch,
        seqLen,
        compact: S > 0,
      }),
    ]));
    return staged("fitness", steps);
  }

  /**
   * All steps of forward + fitness for (batch, seqLen), built once and cached. `weights` and
   * its cache `key` select another weight set (a perturbed copy) bound in place of the model's.
   */
  steps(
    batch: number,
    seqLen: number,
    options: { weights?: WeightLookup; key?: string } = {},
  ): Step[] {
    const key = `${options.key ?? ""}:${batch}x${seqLen}`;
    let s = this.#steps.get(key);
    if (!s) {
      const w = options.weights ?? this.#weights;
      s = [...this.bodySteps(batch, seqLen, w), ...this.fitnessSteps(batch, seqLen, w)];
      this.#steps.set(key, s);
    }
    return s;
  }

  /**
   * Uploads a batch (ids, mask, targets, RoPE tables) into the input buffers and returns its
   * (batch, seqLen). seqLen is the longest row; shorter rows are padded with mask 0.
   */
  upload(tokens: TokenBatch): { batch: number; seqLen: number; scored: number } {
    validateBatch(tokens, { vocabSize: this.config.vocabSize, maxSeqLen: this.options.maxSeqLen });
    const batch = tokens.inputIds.length;
    if (batch > this.options.maxBatch) {
      throw new UserError(
        `batch of ${batch} samples exceeds the forward's maximum ${this.options.maxBatch}`,
      );
    }
    const seqLen = Math.max(...tokens.inputIds.map((r) => r.length));
    const ids = new Uint32Array(batch * seqLen);
    const mask = new Uint32Array(batch * seqLen);
    const paddedMask: number[][] = [];
    tokens.inputIds.forEach((row, b) => {
      ids.set(row, b * seqLen);
      mask.set(tokens.attentionMask[b], b * seqLen);
      paddedMask.push([...tokens.attentionMask[b], ...new Array(seqLen - row.length).fill(0)]);
    });
    const target = scoredTargets(tokens.inputIds, paddedMask, seqLen);
    const g = this.device, b = this.#buf;
    g.write(b.ids, ids);
    g.write(b.mask, mask);
    g.write(b.target, target);
    if (this.options.scoredRows) {
      const compact = compactTargets(target, this.options.scoredRows);
      g.write(b.rowOf, compact.rows);
      g.write(b.targetOf, compact.targets);
    }
    const scored = target.reduce((n, t) => n + (t !== 0xffffffff ? 1 : 0), 0);
    return { batch, seqLen, scored };
  }

  /** Scores a batch: R(x;θ) per sample, with one submit and one readback. */
  async score(tokens: TokenBatch): Promise<ScoreResult> {
    const { batch, seqLen, scored } = this.upload(tokens);
    const steps = this.steps(batch, seqLen);
    this.device.run(steps, "score");
    const r = await this.device.readF32(this.#buf.r, batch);
    return { perSample: Array.from(r), tokens: scored };
  }

  /**
   * Full logits (seqLen, V) of one row. Debug only: needs `debugLogits`, and builds the (R, V)
   * buffer that scoring never does.
   */
  async logits(tokens: TokenBatch, row = 0): Promise<Float32Array> {
    const full = this.#buf.fullLogits;
    if (!full) throw new DeviceError("logits() needs a forward made with debugLogits: true");
    const { batch, seqLen } = this.upload(tokens);
    const c = this.config, V = c.vocabSize;
    const steps = [...this.bodySteps(batch, seqLen)];
    if (!this.#tensors) throw new DeviceError("logits() needs a forward made over tensors");
    for (const shard of this.#tensors(this.headName).shards) {
      steps.push(matmulStep(this.device, {
        label: `lm_head.debug#${shard.rowStart}`,
        x: this.#buf.xn,
        m: batch * seqLen,
        k: c.hiddenSize,
        w: shard.buffer,
        n: shard.rows,
        out: full,
        outStride: V,
        outColOffset: shard.rowStart,
      }));
    }
    this.device.run(steps, "logits");
    return await this.device.readF32(full, seqLen * V, row * seqLen * V * 4);
  }

  /** Waits for queued work. */
  async finish(): Promise<void> {
    await this.device.finish();
  }

  /** Frees the activation buffers. */
  destroy(): void {
    for (const b of Object.values(this.#buf)) this.device.destroyBuffer(b);
    this.#buf = {};
    this.#steps.clear();
  }
}
