/**
 * The tensors of a Qwen3 model: their HF names and shapes, and HF's random initialisation.
 *
 * Legend: V = vocab, H = hidden, I = intermediate, h = query heads, k = kv heads, d = head_dim.
 * Shapes are [out, in], row-major, as nn.Linear stores them.
 *
 * @module
 */
import type { Qwen3Config } from "./config.ts";
import type { TensorData, TensorLayout } from "./safetensors.ts";

/** A tensor's HF name and shape. */
export interface TensorSpec extends TensorLayout {
  shape: number[];
  /** How HF initialises it: normal(0, initializer_range), zeros (biases) or ones (norms). */
  init: "normal" | "zeros" | "ones";
}

/**
 * Every tensor of a Qwen3ForCausalLM with this config, in transformers' state-dict order:
 * model.embed_tokens.weight [V,H]; per layer N, model.layers.N.
 * input_layernorm.weight [H], self_attn.q_proj.weight [h·d, H], k_proj/v_proj [k·d, H],
 * o_proj [H, h·d] (each with a bias [out] when attention_bias), self_attn.q_norm/k_norm [d],
 * post_attention_layernorm [H], mlp.gate_proj/up_proj [I, H], mlp.down_proj [H, I];
 * model.norm.weight [H]; lm_head.weight [V, H] only when the embeddings are not tied.
 */
export function qwen3TensorSpecs(cfg: Qwen3Config): TensorSpec[] {
  const V = cfg.vocabSize, H = cfg.hiddenSize, I = cfg.intermediateSize, d = cfg.headDim;
  const q = cfg.numHeads * d, kv = cfg.numKvHeads * d;
  const specs: TensorSpec[] = [{
    name: "model.embed_tokens.weight",
    shape: [V, H],
    init: "normal",
  }];
  const linear = (name: string, out: number, inp: number) => {
    specs.push({ name: `${name}.weight`, shape: [out, inp], init: "normal" });
    if (cfg.attentionBias) specs.push({ name: `${name}.bias`, shape: [out], init: "zeros" });
  };
  for (let n = 0; n < cfg.numLayers; n++) {
    const p = `model.layers.${n}`;
    specs.push({ name: `${p}.input_layernorm.weight`, shape: [H], init: "ones" });
    linear(`${p}.self_attn.q_proj`, q, H);
    linear(`${p}.self_attn.k_proj`, kv, H);
    linear(`${p}.self_attn.v_proj`, kv, H);
    linear(`${p}.self_attn.o_proj`, H, q);
    specs.push({ name: `${p}.self_attn.q_norm.weight`, shape: [d], init: "ones" });
    specs.push({ name: `${p}.self_attn.k_norm.weight`, shape: [d], init: "ones" });
    specs.push({ name: `${p}.post_attention_layernorm.weight`, shape: [H], init: "ones" });
    specs.push({ name: `${p}.mlp.gate_proj.weight`, shape: [I, H], init: "normal" });
    specs.push({ name: `${p}.mlp.up_proj.weight`, shape: [I, H], init: "normal" });
    specs.push({ name: `${p}.mlp.down_proj.weight`, shape: [H, I], init: "normal" });
  }
  specs.push({ name: "model.norm.weight", shape: [H], init: "ones" });
  if (!cfg.tieWordEmbeddings) specs.push({ name: "lm_head.weight", shape: [V, H], init: "normal" });
  return specs;
}

/** FNV-1a over a string's UTF-16 code units: a stable 32-bit key for a tensor name. */
function hashName(name: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** splitmix32's finaliser: spreads a 32-bit value over all bits. */
function mix32(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x21f0aaad);
  x = Math.imul(x ^ (x >>> 15), 0x735a2d97);
  return (x ^ (x >>> 15)) >>> 0;
}

/**
 * xoshiro128** (Blackman & Vigna, 2018): a small, fast 32-bit generator, seeded through
 * splitmix32 from a 53-bit seed and a stream key. Not cryptographic; meant for weight init.
 */
export class Xoshiro128 {
  #s0: number;
  #s1: number;
  #s2: number;
  #s3: number;

  /** A generator for (`seed`, `stream`): distinct streams are independent sequences. */
  constructor(seed: number, options: { stream?: number } = {}) {
    if (!Number.isSafeInteger(seed)) throw new Error(`seed must be a safe integer, got ${seed}`);
    const lo = seed >>> 0;
    const hi = Math.floor(seed / 0x100000000) >>> 0;
    let x = mix32(lo ^ mix32(hi ^ 0x9e3779b9) ^ mix32((options.stream ?? 0) ^ 0x7f4a7c15));
    const next = () => {
      x = (x + 0x9e3779b9) >>> 0;
      return mix32(x);
    };
    this.#s0 = next();
    this.#s1 = next();
    this.#s2 = next();
    this.#s3 = next();
    // The all-zero state is the one state xoshiro cannot leave.
    if ((this.#s0 | this.#s1 | this.#s2 | this.#s3) === 0) this.#s0 = 1;
  }

  /** The next 32 random bits, as an unsigned integer. */
  nextU32(): number {
    const s0 = this.#s0, s1 = this.#s1, s2 = this.#s2, s3 = this.#s3;
    const r = Math.imul(rotl(Math.imul(s1, 5), 7), 9) >>> 0;
    const t = s1 << 9;
    const n2 = s2 ^ s0;
    const n3 = s3 ^ s1;
    this.#s1 = s1 ^ n2;
    this.#s0 = s0 ^ n3;
    this.#s2 = n2 ^ t;
    this.#s3 = rotl(n3, 11);
    return r;
  }

  /** A uniform double in (0, 1), 53 bits: never 0, so log() in Box–Muller is finite. */
  nextOpenUnit(): number {
    const hi = this.nextU32() >>> 5; // 27 bits
    const lo = this.nextU32() >>> 6; // 26 bits
    return (hi * 67108864 + lo + 0.5) / 9007199254740992;
  }

  /** Fills `out` with N(0, std²) samples (Box–Muller, both outputs of each pair used). */
  fillNormal(out: Float32Array, options: { std?: number } = {}): Float32Array {
    const std = options.std ?? 1;
    for (let i = 0; i < out.length; i += 2) {
      const r = std * Math.sqrt(-2 * Math.log(this.nextOpenUnit()));
      const theta = 2 * Math.PI * this.nextOpenUnit();
      out[i] = r * Math.cos(theta);
      if (i + 1 < out.length) out[i + 1] = r * Math.sin(theta);
    }
    return out;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/**
 * One tensor of {@link randomInit}: normal(0, initializer_range) for linear and embedding
 * weights, zeros for biases, ones for norms. The normal draws come from a stream keyed by
 * (seed, tensor name), so a tensor is the same whichever order or subset is generated.
 */
export function initTensor(
  cfg: Qwen3Config,
  spec: TensorSpec,
  options: { seed: number },
): TensorData {
  let count = 1;
  for (const dim of spec.shape) count *= dim;
  const data = new Float32Array(count);
  if (spec.init === "ones") data.fill(1);
  else if (spec.init === "normal") {
    new Xoshiro128(options.seed, { stream: hashName(spec.name) }).fillNormal(data, {
      std: cfg.initializerRange,
    });
  }
  return { name: spec.name, shape: spec.shape, data };
}

/**
 * HF's initialisation of a Qwen3ForCausalLM (`_init_weights`), deterministic from `seed`,
 * yielded one tensor at a time in {@link qwen3TensorSpecs} order so that a large model never
 * has to be in memory whole. Same seed, same weights, on every platform.
 */
export function* randomInit(cfg: Qwen3Config, options: { seed: number }): Generator<TensorData> {
  for (const spec of qwen3TensorSpecs(cfg)) yield initTensor(cfg, spec, options);
}
