/**
 * Autoregressive generation with a KV cache: the Qwen3 forward of model/forward.ts, one step of
 * new tokens at a time, each layer's keys and values kept per sequence in a cache so a step
 * costs the new tokens only. Ragged prompts are batched; the next token is chosen on the host
 * from the step's read-back logits (model/sampling.ts: greedy, or seeded sampling with
 * temperature, top-k and top-p); a sequence stops at an EOS id, a stop string, or
 * max_new_tokens.
 *
 * Legend: S = sequences (members·B), TN = new tokens per sequence in a step, R = S·TN rows,
 * SLOTS = cache slots per sequence (the longest prompt plus the new tokens), H = hidden,
 * NH/NKV = heads/kv heads, D = head_dim, I = intermediate, V = vocab, L = layers.
 *
 * A generation of prompts p_b (L_b tokens each):
 *   prefill, in chunks of TN ≤ prefillChunk tokens: tokens 0..L_b−2 of each prompt through
 *     every layer; keys and values land in slots 0..L_b−2 (a shorter prompt's padding rows
 *     land past its end, where the first decode steps overwrite them before any query reads
 *     them); no LM head.
 *   decode step k = 0, 1, …: one token per sequence (the prompt's last at k = 0, then the one
 *     chosen at k − 1) at position L_b − 1 + k, through every layer, then the final norm and the
 *     LM head: logits (S, V), read back, the next token chosen per sequence.
 * Per layer of a step:
 *   xn = rmsnorm(x); q, k, v = xn·Wᵀ (+b); q, k = rope_at(q_norm(q)), rope_at(k_norm(k))
 *   cache[l][seq][slot] = k, v                       (kernels/kv_cache.ts)
 *   a = attention of q over cache[l][seq][0..pos]    causal by position, GQA
 *   x += a·Woᵀ; xn = rmsnorm(x); x += swiglu(xn)·Wdᵀ
 * Positions live in a small buffer written before each step (pos, S u32), never in a kernel's
 * constants, so one set of pipelines serves every step (kernels/kv_cache.ts).
 *
 * Members: `members` sequences-blocks decode at once with their own weights (a population group
 * in the reward fitness, pipeline/stages/reward.ts): the prompts repeat in each member's block,
 * and each member reads its weights through the {@link WeightLookup} it is given.
 *
 * Memory: the activations of one prefill chunk (members·B·TN rows), the logits of a decode step
 * (S × a vocab piece, and S × V they are gathered into when the head comes in pieces), and the
 * cache, 2·L·S·SLOTS·NKV·D·4 bytes ({@link cacheBytes}).
 *
 * Tests: tests/decode_test.ts (greedy tokens equal model/reference.ts's on both backends,
 * sampling, stops, ragged batches, members).
 *
 * @module
 */
import type { Qwen3Config } from "./config.ts";
import {
  type Copy,
  type Device,
  type DeviceBuffer,
  DeviceError,
  staged,
} from "../kernels/device.ts";
import type { DeviceTensor } from "../kernels/tensor.ts";
import type { Step } from "../kernels/program.ts";
import { rmsnormStep } from "../kernels/rmsnorm.ts";
import { ropeTables } from "../kernels/qk_norm_rope.ts";
import { attentionCacheStep, kvCacheWriteStep, qkNormRopeAtStep } from "../kernels/kv_cache.ts";
import { UserError } from "../errors.ts";
import type { DeviceWeights } from "./device_weights.ts";
import { type TensorLookup, tensorReads, type WeightLookup } from "./forward.ts";
import {
  checkSampling,
  isSampling,
  sampleToken,
  samplingDraws,
  type SamplingOptions,
} from "./sampling.ts";

/** Options of {@link Qwen3Decoder}. */
export interface DecoderOptions {
  /** B: most prompts per generation (per member). */
  maxBatch: number;
  /** SLOTS: cache slots per sequence, the longest prompt plus the most new tokens. */
  maxSeqLen: number;
  /** Members decoded at once, each with its own weights. Default 1. */
  members?: number;
  /** Most prompt tokens per sequence in one prefill step. Default 32. */
  prefillChunk?: number;
  /**
   * Allocate the up projection's own buffer up front: low-rank members read the MLP's gate and
   * up apart (the fused matmul never needs it). Default false: made on first use.
   */
  upProjection?: boolean;
}

/** Options of {@link Qwen3Decoder.generate}. */
export interface GenerateOptions {
  /** Most tokens generated per sequence. */
  maxNewTokens: number;
  /** How each next token is chosen; absent: greedy. */
  sampling?: SamplingOptions;
  /**
   * The uniform draw of prompt i at step k, for sampling. Default: samplingDraws(sampling.seed)
   * at (k, i) (model/sampling.ts); every member of a prompt shares it.
   */
  draw?: (step: number, prompt: number) => number;
  /** Ids that end a sequence (EOS); the id ends its newIds, and is not part of its text. */
  stopIds?: readonly number[];
  /** Strings that end a sequence once its text holds one; the text ends before it. */
  stopStrings?: readonly string[];
  /** Ids to text (the tokenizer's decode): needed for stop strings and `text`. */
  decode?: (ids: number[]) => string;
  /** The weights to decode with (a member group's); default the decoder's own. */
  weights?: WeightLookup;
  /** Members in `weights` (≤ the decoder's members); the prompts repeat in each. Default 1. */
  members?: number;
  /** Called with each token chosen: its sequence (member-major), the id, and the step. */
  onToken?: (sequence: number, id: number, step: number) => void;
}

/** Why a sequence ended. */
export type FinishReason = "eos" | "stop" | "length";

/** One generated sequence. */
export interface Generated {
  /** The ids generated, in order (an EOS id last when it ended the sequence). */
  newIds: number[];
  finish: FinishReason;
  /** The text of newIds without the EOS id, cut before the stop string (with `decode`). */
  text?: string;
}

/** What {@link Qwen3Decoder.generate} returns. */
export interface GenerateResult {
  /** One per sequence: member z's prompt b at z·B + b. */
  sequences: Generated[];
  /** Decode steps run (the longest sequence's new tokens). */
  steps: number;
  /** Tokens generated over all sequences. */
  tokens: number;
  /** Wall seconds, prefill included. */
  seconds: number;
}

/** The steps of one decode or prefill step, and the buffer its logits end in (decode only). */
export interface DecodeProgram {
  steps: Step[];
  logits: DeviceBuffer;
}

/** Bytes of the KV cache for `sequences` sequences of `slots` slots. */
export function cacheBytes(config: Qwen3Config, o: { sequences: number; slots: number }): number {
  return 2 * config.numLayers * o.sequences * o.slots * config.numKvHeads * config.headDim * 4;
}

/** Rounds n up to a multiple of 8 (few distinct prefill shapes: each is a pipeline set). */
function roundUp8(n: number): number {
  return Math.ceil(n / 8) * 8;
}

/** A Qwen3 decoder over fixed device buffers: activations, logits and the KV cache. */
export class Qwen3Decoder {
  readonly device: Device;
  readonly config: Qwen3Config;
  readonly options: Required<DecoderOptions>;
  /** Vocab columns per LM-head piece of a decode step. */
  readonly vocabChunk: number;
  #weights: WeightLookup;
  #buf: Record<string, DeviceBuffer> = {};
  #cache: { k: DeviceBuffer; v: DeviceBuffer }[] = [];
  #upBytes: number;
  /** Programs per weight set, by phase and shape, with the buffer their logits end in. */
  #programs = new WeakMap<WeightLookup, Map<string, DecodeProgram>>();

  constructor(
    device: Device,
    config: Qwen3Config,
    weights: DeviceWeights | TensorLookup | WeightLookup,
    options: DecoderOptions,
  ) {
    this.device = device;
    this.config = config;
    if (weights instanceof Map) {
      this.#weights = tensorReads(device, (name) => {
        const t = weights.get(name);
        if (!t) throw new DeviceError(`weight ${name} is not on the device`);
        return t;
      });
    } else if (typeof weights === "function") this.#weights = tensorReads(device, weights);
    else this.#weights = weights;
    const members = options.members ?? 1;
    const slots = options.maxSeqLen;
    if (!Number.isInteger(slots) || slots < 1) {
      throw new Error(`decoder: maxSeqLen must be a positive integer, got ${slots}`);
    }
    if (slots > config.maxPositionEmbeddings) {
      throw new UserError(
        `a prompt and its new tokens take up to ${slots} positions, more than the model's ` +
          `max_position_embeddings ${config.maxPositionEmbeddings}; use shorter prompts or fewer new tokens`,
      );
    }
    const chunk = Math.min(options.prefillChunk ?? 32, Math.max(1, roundUp8(slots - 1)));
    this.options = {
      maxBatch: options.maxBatch,
      maxSeqLen: slots,
      members,
      prefillChunk: chunk,
      upProjection: options.upProjection ?? false,
    };
    const c = config, S = members * options.maxBatch, rows = S * chunk;
    const H = c.hiddenSize, D = c.headDim, I = c.intermediateSize, V = c.vocabSize;
    const binding = device.limits.maxStorageBufferBindingSize;
    // A decode step's logits: the whole vocabulary in one piece when it binds, else chunks
    // gathered into a (S, V) buffer for the readback.
    this.vocabChunk = Math.min(V, Math.floor(binding / (S * 4)));
    if (this.vocabChunk < 1) {
      throw new UserError(
        `${S} sequences are too many for one LM-head chunk on ${device.name}; generate fewer at once`,
      );
    }
    const sizes: Record<string, number> = {
      ids: rows * 4,
      pos: S * 4,
      x: rows * H * 4,
      xn: rows * H * 4,
      q: rows * c.numHeads * D * 4,
      k: rows * c.numKvHeads * D * 4,
      v: rows * c.numKvHeads * D * 4,
      attn: rows * c.numHeads * D * 4,
      gate: rows * I * 4,
      logits: S * this.vocabChunk * 4,
      cos: slots * (D / 2) * 4,
      sin: slots * (D / 2) * 4,
    };
    // A head read in pieces (vocab chunks, row shards, a member's chunks formed where read)
    // gathers its logits here for the readback; made up front, so a plan counts it.
    sizes.fullLogits = S * V * 4;
    this.#upBytes = rows * I * 4;
    if (this.options.upProjection) sizes.up = this.#upBytes;
    for (const [name, bytes] of Object.entries(sizes)) {
      // fullLogits is only copied into and read back: no kernel binds it.
      if (bytes > binding && name !== "fullLogits") {
        throw new UserError(
          `decode activation ${name} needs ${bytes} bytes for ${S} sequences × ${chunk} tokens, ` +
            `over the ${binding}-byte binding limit of ${device.name}; generate fewer at once`,
        );
      }
      this.#buf[name] = device.createBuffer(`decode.${name}`, bytes, "activations");
    }
    const layerCache = cacheBytes(c, { sequences: S, slots }) / (2 * c.numLayers);
    if (layerCache > binding) {
      throw new UserError(
        `the KV cache of one layer needs ${layerCache} bytes for ${S} sequences × ${slots} ` +
          `positions, over the ${binding}-byte binding limit of ${device.name}; generate fewer ` +
          `at once or fewer new tokens`,
      );
    }
    for (let l = 0; l < c.numLayers; l++) {
      this.#cache.push({
        k: device.createBuffer(`cache.L${l}.k`, layerCache, "activations"),
        v: device.createBuffer(`cache.L${l}.v`, layerCache, "activations"),
      });
    }
    const t = ropeTables({ seqLen: slots, headDim: D, theta: c.ropeTheta });
    device.write(this.#buf.cos, t.cos);
    device.write(this.#buf.sin, t.sin);
  }

  /** Bytes of the KV cache this decoder allocated. */
  get cacheBytes(): number {
    return this.#cache.reduce((a, c) => a + c.k.size + c.v.size, 0);
  }

  /** Bytes of everything else it allocated: activations, logits, ids and positions. */
  get workspaceBytes(): number {
    return Object.values(this.#buf).reduce((a, b) => a + b.size, 0);
  }

  /** The LM head's name: embed_tokens when tied. */
  get headName(): string {
    return this.config.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  }

  #upBuffer(): DeviceBuffer {
    this.#buf.up ??= this.device.createBuffer("decode.up", this.#upBytes, "activations");
    return this.#buf.up;
  }

  /**
   * The steps of one decode step for `batch` prompts per member and `newTokens` tokens per
   * sequence: every layer with its cache write and cache attention, and with `head` the final
   * norm and the LM head into the logits. Built once per shape and weight set.
   */
  steps(
    o: {
      batch: number;
      newTokens: number;
      head: boolean;
      members?: number;
      weights?: WeightLookup;
    },
  ): DecodeProgram {
    const weights = o.weights ?? this.#weights, members = o.members ?? 1;
    let perWeights = this.#programs.get(weights);
    if (!perWeights) this.#programs.set(weights, perWeights = new Map());
    const key = `${o.head ? "decode" : "prefill"}:${members}:${o.batch}x${o.newTokens}`;
    let s = perWeights.get(key);
    if (!s) {
      s = this.#build({ ...o, members, weights });
      perWeights.set(key, s);
    }
    return s;
  }

  #build(
    o: { batch: number; newTokens: number; head: boolean; members: number; weights: WeightLookup },
  ): DecodeProgram {
    const c = this.config, g = this.device, b = this.#buf, weights = o.weights;
    const S = o.members * o.batch, TN = o.newTokens, Rm = o.batch * TN, R = S * TN;
    const H = c.hiddenSize, D = c.headDim, slots = this.options.maxSeqLen;
    if (o.members > this.options.members || o.batch > this.options.maxBatch) {
      throw new Error(
        `decoder: ${o.members} members × ${o.batch} prompts exceed its ${this.options.members} × ${this.options.maxBatch}`,
      );
    }
    if (TN > this.options.prefillChunk) {
      throw new Error(`decoder: ${TN} tokens per step exceed its ${this.options.prefillChunk}`);
    }
    const ms = (t: DeviceTensor) => t.memberStride ?? 0;
    const vec = (name: string, read: (buffer: DeviceBuffer, memberStride: number) => Step) => {
      const v = weights.vector(name);
      return [...v.before, read(v.tensor.shards[0].buffer, ms(v.tensor))];
    };
    const norm = (label: string, weight: string) =>
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
        }));
    const rows = { sequences: S, newTokens: TN };
    const steps: Step[] = [
      ...weights.gather("model.embed_tokens.weight", {
        label: "embed",
        ids: b.ids,
        x: b.x,
        m: Rm,
        hidden: H,
        members: o.members,
      }),
    ];
    for (let l = 0; l < c.numLayers; l++) {
      const p = `model.layers.${l}.`, cache = this.#cache[l];
      const lin = (name: string, x: DeviceBuffer, out: DeviceBuffer, k: number, acc = false) =>
        weights.linear(`${p}${name}.weight`, {
          label: `L${l}.${name}`,
          x,
          m: Rm,
          k,
          out,
          accumulate: acc,
          bias: c.attentionBias && name.startsWith("self_attn.") ? `${p}${name}.bias` : undefined,
          members: o.members,
        });
      steps.push(...norm(`L${l}.input_layernorm`, `${p}input_layernorm.weight`));
      steps.push(...lin("self_attn.q_proj", b.xn, b.q, H));
      steps.push(...lin("self_attn.k_proj", b.xn, b.k, H));
      steps.push(...lin("self_attn.v_proj", b.xn, b.v, H));
      for (const [which, heads] of [["q", c.numHeads], ["k", c.numKvHeads]] as const) {
        steps.push(...vec(`${p}self_attn.${which}_norm.weight`, (w, stride) =>
          qkNormRopeAtStep(g, {
            label: `L${l}.${which}_norm_rope`,
            x: b[which],
            w,
            cos: b.cos,
            sin: b.sin,
            pos: b.pos,
            ...rows,
            heads,
            headDim: D,
            positions: slots,
            eps: c.rmsNormEps,
            members: { rows: Rm, wStride: stride },
          })));
      }
      steps.push(kvCacheWriteStep(g, {
        label: `L${l}.cache_write`,
        k: b.k,
        v: b.v,
        pos: b.pos,
        kCache: cache.k,
        vCache: cache.v,
        ...rows,
        slots,
        kvHeads: c.numKvHeads,
        headDim: D,
      }));
      steps.push(attentionCacheStep(g, {
        label: `L${l}.attention`,
        q: b.q,
        kCache: cache.k,
        vCache: cache.v,
        pos: b.pos,
        out: b.attn,
        ...rows,
        slots,
        heads: c.numHeads,
        kvHeads: c.numKvHeads,
        headDim: D,
      }));
      steps.push(...lin("self_attn.o_proj", b.attn, b.x, c.numHeads * D, true));
      steps.push(...norm(`L${l}.post_attention_layernorm`, `${p}post_attention_layernorm.weight`));
      steps.push(...weights.gateUp({
        layer: `L${l}`,
        gate: `${p}mlp.gate_proj.weight`,
        up: `${p}mlp.up_proj.weight`,
        x: b.xn,
        m: Rm,
        k: H,
        out: b.gate,
        members: o.members,
        upScratch: () => this.#upBuffer(),
      }));
      steps.push(...lin("mlp.down_proj", b.gate, b.x, c.intermediateSize, true));
    }
    let logits = b.logits;
    if (o.head) {
      steps.push(...norm("norm", "model.norm.weight"));
      const V = c.vocabSize;
      steps.push(...weights.head(this.headName, {
        x: b.xn,
        m: Rm,
        k: H,
        logits: b.logits,
        chunk: this.vocabChunk,
        members: o.members,
      }, (start, n): Step[] => {
        if (start === 0 && n === V) return [];
        // A head in pieces (vocab chunks, or row shards): each sequence's piece of columns into
        // its row of the whole logits, the buffer read back.
        const full = b.fullLogits;
        logits = full;
        return Array.from({ length: R }, (_, r): Copy => ({
          op: "copy",
          label: `logits[${start}:${start + n}]`,
          role: "gather logits",
          src: b.logits,
          srcOffset: r * n * 4,
          dst: full,
          dstOffset: (r * V + start) * 4,
          bytes: n * 4,
        }));
      }));
    }
    return { steps: staged("model", steps), logits };
  }

  /**
   * Generates up to `maxNewTokens` tokens after each prompt (ids, at least one each), all
   * prompts at once: every member's copy of every prompt, when `members` > 1.
   */
  async generate(
    prompts: readonly (readonly number[])[],
    o: GenerateOptions,
  ): Promise<GenerateResult> {
    const t0 = performance.now();
    const c = this.config, d = this.device, V = c.vocabSize;
    const members = o.members ?? 1, B = prompts.length, S = members * B;
    const weights = o.weights ?? this.#weights;
    const slots = this.options.maxSeqLen;
    if (o.sampling) checkSampling(o.sampling);
    if (!Number.isInteger(o.maxNewTokens) || o.maxNewTokens < 0) {
      throw new RangeError(`maxNewTokens ${o.maxNewTokens} must be an integer ≥ 0`);
    }
    if (B === 0) return { sequences: [], steps: 0, tokens: 0, seconds: 0 };
    if (B > this.options.maxBatch || members > this.options.members) {
      throw new Error(
        `generate: ${members} members × ${B} prompts exceed the decoder's ` +
          `${this.options.members} × ${this.options.maxBatch}`,
      );
    }
    prompts.forEach((p, i) => {
      if (p.length === 0) throw new UserError(`prompt ${i} is empty; give at least one token`);
      p.forEach((id, t) => {
        if (!Number.isInteger(id) || id < 0 || id >= V) {
          throw new UserError(
            `prompt ${i}, position ${t}: token id ${id} is outside the model's vocabulary [0, ${V})`,
          );
        }
      });
      if (p.length + o.maxNewTokens - 1 > slots) {
        throw new UserError(
          `prompt ${i} has ${p.length} tokens; with ${o.maxNewTokens} new tokens it needs ` +
            `${p.length + o.maxNewTokens - 1} positions, more than the decoder's ${slots}`,
        );
      }
    });
    const lengths = prompts.map((p) => p.length);
    const seqOf = (z: number, i: number) => z * B + i;
    const ids = new Uint32Array(S * this.options.prefillChunk), pos = new Uint32Array(S);

    // Prefill: every prompt token but the last, in chunks.
    const pre = Math.max(...lengths) - 1;
    if (pre > 0) {
      const TN = Math.min(this.options.prefillChunk, roundUp8(pre));
      const program = this.steps({ batch: B, newTokens: TN, head: false, members, weights });
      for (let start = 0; start < pre; start += TN) {
        ids.fill(0);
        for (let z = 0; z < members; z++) {
          prompts.forEach((p, i) => {
            for (let t = 0; t < TN && start + t < p.length - 1; t++) {
              ids[seqOf(z, i) * TN + t] = p[start + t];
            }
          });
        }
        pos.fill(start);
        d.write(this.#buf.ids, ids.subarray(0, S * TN));
        d.write(this.#buf.pos, pos);
        d.run(program.steps, `prefill ${start}`);
      }
    }

    // Decode: one token per sequence per step, chosen on the host.
    const program = this.steps({ batch: B, newTokens: 1, head: true, members, weights });
    const seeded = samplingDraws(o.sampling?.seed ?? 0);
    const draw = o.draw ?? ((step: number, prompt: number) => seeded(step, prompt));
    const stopIds = new Set(o.stopIds ?? []);
    const stops = (o.stopStrings ?? []).filter((s) => s.length > 0);
    if (stops.length > 0 && !o.decode) throw new Error("generate: stop strings need `decode`");
    const out: Generated[] = Array.from({ length: S }, () => ({ newIds: [], finish: "length" }));
    const done = new Array<boolean>(S).fill(false);
    let steps = 0, tokens = 0;
    for (let k = 0; k < o.maxNewTokens && done.some((x) => !x); k++) {
      for (let z = 0; z < members; z++) {
        prompts.forEach((p, i) => {
          const s = seqOf(z, i);
          ids[s] = k === 0 ? p[p.length - 1] : out[s].newIds.at(-1)!;
          pos[s] = lengths[i] - 1 + k;
        });
      }
      d.write(this.#buf.ids, ids.subarray(0, S));
      d.write(this.#buf.pos, pos);
      d.run(program.steps, `decode ${k}`);
      const logits = await d.readF32(program.logits, S * V);
      steps++;
      for (let s = 0; s < S; s++) {
        if (done[s]) continue;
        // The draw depends on the prompt and the step, not the member: members of a population
        // share their random numbers (common random numbers).
        const id = sampleToken(logits, {
          ...o.sampling,
          u: isSampling(o.sampling) ? draw(k, s % B) : 0,
          offset: s * V,
          n: V,
        });
        const g = out[s];
        g.newIds.push(id);
        tokens++;
        o.onToken?.(s, id, k);
        if (stopIds.has(id)) {
          g.finish = "eos";
          done[s] = true;
        } else if (stops.length > 0 && stopAt(o.decode!(g.newIds), stops) >= 0) {
          g.finish = "stop";
          done[s] = true;
        }
      }
    }
    if (o.decode) {
      for (const g of out) {
        const kept = g.finish === "eos" ? g.newIds.slice(0, -1) : g.newIds;
        const text = o.decode(kept);
        const at = stops.length > 0 ? stopAt(text, stops) : -1;
        g.text = at >= 0 ? text.slice(0, at) : text;
      }
    }
    return { sequences: out, steps, tokens, seconds: (performance.now() - t0) / 1000 };
  }

  /** Frees the buffers. */
  destroy(): void {
    for (const b of Object.values(this.#buf)) this.device.destroyBuffer(b);
    for (const c of this.#cache) {
      this.device.destroyBuffer(c.k);
      this.device.destroyBuffer(c.v);
    }
    this.#buf = {};
    this.#cache = [];
    this.#programs = new WeakMap();
  }
}

/** Where the first of `stops` starts in `text`, or −1. */
export function stopAt(text: string, stops: readonly string[]): number {
  let at = -1;
  for (const s of stops) {
    const i = text.indexOf(s);
    if (i >= 0 && (at < 0 || i < at)) at = i;
  }
  return at;
}
