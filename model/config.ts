/**
 * The Qwen3 model configuration esflow computes with, read from and written to HF config.json.
 *
 * @module
 */
import { UserError } from "../errors.ts";

/** A Qwen3 architecture, in esflow's own camelCase names (HF's snake_case keys in comments). */
export interface Qwen3Config {
  /** vocab_size: rows of embed_tokens and lm_head. */
  vocabSize: number;
  /** hidden_size: H. */
  hiddenSize: number;
  /** intermediate_size: I, the MLP width. */
  intermediateSize: number;
  /** num_hidden_layers. */
  numLayers: number;
  /** num_attention_heads: query heads. */
  numHeads: number;
  /** num_key_value_heads: kv heads (GQA); numHeads % numKvHeads == 0. */
  numKvHeads: number;
  /** head_dim: its own key, not hidden/heads. */
  headDim: number;
  /** max_position_embeddings. */
  maxPositionEmbeddings: number;
  /** rms_norm_eps. */
  rmsNormEps: number;
  /** rope_theta (4.51) or rope_parameters.rope_theta (5.x); 10000 when absent. */
  ropeTheta: number;
  /** tie_word_embeddings: the LM head is embed_tokens. */
  tieWordEmbeddings: boolean;
  /** attention_bias: q/k/v/o projections have biases. */
  attentionBias: boolean;
  /** initializer_range: std of the normal init of linear and embedding weights. */
  initializerRange: number;
  /** bos_token_id, when given. */
  bosTokenId?: number;
  /** eos_token_id, when given. */
  eosTokenId?: number;
  /** torch_dtype / dtype of the stored weights: "float32", "bfloat16" or "float16". */
  torchDtype: string;
}

/** The most layers a config may have (Qwen3 models have 28 to 94). */
export const MAX_LAYERS = 4096;

/** The element types a config's torch_dtype may name. */
export const TORCH_DTYPES = ["float32", "bfloat16", "float16"] as const;

type Json = Record<string, unknown>;

/**
 * Reads a HuggingFace Qwen3 config.json object into a {@link Qwen3Config}. Accepts the
 * transformers 4.51 form (top-level `rope_theta`, `torch_dtype`) and the 5.x form
 * (`rope_parameters.rope_theta`, `dtype`). Defaults, as HF applies them: rope_theta 10000,
 * head_dim hidden_size / num_attention_heads, num_key_value_heads num_attention_heads,
 * max_position_embeddings 32768, rms_norm_eps 1e-6, initializer_range 0.02, tie_word_embeddings
 * and attention_bias false, torch_dtype "float32". Keys esflow doesn't use are ignored; features
 * it doesn't implement (sliding window, rope scaling, another activation) are errors. Every error
 * is a one-line {@link UserError} naming `file` and the key.
 */
export function parseQwen3Config(json: unknown, options: { file: string }): Qwen3Config {
  const { file } = options;
  const fail = (fault: string): never => {
    throw new UserError(`${file}: ${fault}`);
  };
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    fail("config is not a JSON object; expected a HuggingFace config.json");
  }
  const obj = json as Json;
  if (obj.model_type !== "qwen3") {
    fail(
      `model_type is ${JSON.stringify(obj.model_type)}, but only "qwen3" is supported; ` +
        `use a Qwen3 config.json`,
    );
  }
  const present = (key: string) => obj[key] !== undefined && obj[key] !== null;
  const positiveInt = (key: string, fallback?: number): number => {
    if (!present(key)) {
      if (fallback !== undefined) return fallback;
      fail(`missing required key "${key}" (a positive integer); add it to config.json`);
    }
    const v = obj[key];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0) {
      fail(`"${key}" must be a positive integer, got ${JSON.stringify(v)}; fix config.json`);
    }
    return v as number;
  };
  const positiveNumber = (value: unknown, key: string, fallback: number): number => {
    if (value === undefined || value === null) return fallback;
    if (typeof value !== "number" || !Number.isFinite(value) || value <= 0) {
      fail(`"${key}" must be a positive number, got ${JSON.stringify(value)}; fix config.json`);
    }
    return value as number;
  };
  const bool = (key: string, fallback: boolean): boolean => {
    if (!present(key)) return fallback;
    if (typeof obj[key] !== "boolean") {
      fail(`"${key}" must be true or false, got ${JSON.stringify(obj[key])}; fix config.json`);
    }
    return obj[key] as boolean;
  };
  const tokenId = (key: string): number | undefined => {
    if (!present(key)) return undefined;
    // generation-style configs may list several ids; the first is the one a model config means.
    const v = Array.isArray(obj[key]) ? (obj[key] as unknown[])[0] : obj[key];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
      fail(
        `"${key}" must be a token id (integer >= 0), got ${
          JSON.stringify(obj[key])
        }; fix config.json`,
      );
    }
    return v as number;
  };

  const vocabSize = positiveInt("vocab_size");
  const hiddenSize = positiveInt("hidden_size");
  const intermediateSize = positiveInt("intermediate_size");
  const numLayers = positiveInt("num_hidden_layers");
  // Every layer is a dozen tensors listed before anything is allocated: a typo such as 1e9
  // would exhaust memory listing them. The largest Qwen3 has 94 layers.
  if (numLayers > MAX_LAYERS) {
    fail(
      `"num_hidden_layers" ${numLayers} is more layers than esflow can hold (at most ${MAX_LAYERS}; ` +
        `Qwen3 models have 28 to 94); fix config.json`,
    );
  }
  const numHeads = positiveInt("num_attention_heads");
  const numKvHeads = positiveInt("num_key_value_heads", numHeads);
  if (numHeads % numKvHeads !== 0) {
    fail(
      `num_attention_heads (${numHeads}) must be a multiple of num_key_value_heads ` +
        `(${numKvHeads}); fix config.json`,
    );
  }
  if (!present("head_dim") && hiddenSize % numHeads !== 0) {
    fail(
      `head_dim is absent and hidden_size (${hiddenSize}) is not a multiple of ` +
        `num_attention_heads (${numHeads}); add "head_dim" to config.json`,
    );
  }
  const headDim = positiveInt("head_dim", hiddenSize / numHeads);
  if (headDim % 2 !== 0) fail(`"head_dim" must be even for RoPE, got ${headDim}; fix config.json`);
  const maxPositionEmbeddings = positiveInt("max_position_embeddings", 32768);
  const rmsNormEps = positiveNumber(obj.rms_norm_eps, "rms_norm_eps", 1e-6);

  let ropeTheta = 10000;
  const ropeParameters = obj.rope_parameters;
  if (ropeParameters !== undefined && ropeParameters !== null) {
    if (typeof ropeParameters !== "object" || Array.isArray(ropeParameters)) {
      fail(
        `"rope_parameters" must be an object, got ${
          JSON.stringify(ropeParameters)
        }; fix config.json`,
      );
    }
    const rp = ropeParameters as Json;
    if (rp.rope_type !== undefined && rp.rope_type !== "default") {
      fail(
        `rope_parameters.rope_type ${
          JSON.stringify(rp.rope_type)
        } is not supported; only "default" RoPE`,
      );
    }
    ropeTheta = positiveNumber(rp.rope_theta, "rope_parameters.rope_theta", ropeTheta);
  }
  if (present("rope_theta")) ropeTheta = positiveNumber(obj.rope_theta, "rope_theta", ropeTheta);
  const ropeScaling = obj.rope_scaling;
  if (ropeScaling !== undefined && ropeScaling !== null) {
    const type = typeof ropeScaling === "object"
      ? (ropeScaling as Json).rope_type ?? (ropeScaling as Json).type
      : undefined;
    if (type !== "default") {
      fail(
        `rope_scaling ${JSON.stringify(ropeScaling)} is not supported; set it to null (plain RoPE)`,
      );
    }
  }
  if (bool("use_sliding_window", false)) {
    fail(`use_sliding_window true is not supported; set it to false`);
  }
  if (present("hidden_act") && obj.hidden_act !== "silu") {
    fail(`hidden_act ${JSON.stringify(obj.hidden_act)} is not supported; Qwen3 uses "silu"`);
  }

  let initializerRange = 0.02;
  if (present("initializer_range")) {
    const v = obj.initializer_range;
    if (typeof v !== "number" || !Number.isFinite(v) || v < 0) {
      fail(`"initializer_range" must be a number >= 0, got ${JSON.stringify(v)}; fix config.json`);
    }
    initializerRange = v as number;
  }
  const dtypeKey = present("dtype") ? "dtype" : "torch_dtype";
  const torchDtype = present(dtypeKey) ? obj[dtypeKey] : "float32";
  if (!(TORCH_DTYPES as readonly unknown[]).includes(torchDtype)) {
    fail(
      `"${dtypeKey}" ${JSON.stringify(torchDtype)} is not one of ${
        TORCH_DTYPES.join(", ")
      }; fix config.json`,
    );
  }

  const config: Qwen3Config = {
    vocabSize,
    hiddenSize,
    intermediateSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    maxPositionEmbeddings,
    rmsNormEps,
    ropeTheta,
    tieWordEmbeddings: bool("tie_word_embeddings", false),
    attentionBias: bool("attention_bias", false),
    initializerRange,
    torchDtype: torchDtype as string,
  };
  const bos = tokenId("bos_token_id");
  const eos = tokenId("eos_token_id");
  if (bos !== undefined) config.bosTokenId = bos;
  if (eos !== undefined) config.eosTokenId = eos;
  return config;
}

/**
 * The config.json object transformers 4.51 writes for this config: every key its Qwen3Config
 * saves, sorted, with `rope_theta` at the top level. transformers 4.51 and 5.x both read it.
 */
export function qwen3ConfigToJson(cfg: Qwen3Config): Record<string, unknown> {
  const out: Record<string, unknown> = {
    architectures: ["Qwen3ForCausalLM"],
    attention_bias: cfg.attentionBias,
    attention_dropout: 0.0,
    bos_token_id: cfg.bosTokenId,
    eos_token_id: cfg.eosTokenId,
    head_dim: cfg.headDim,
    hidden_act: "silu",
    hidden_size: cfg.hiddenSize,
    initializer_range: cfg.initializerRange,
    intermediate_size: cfg.intermediateSize,
    max_position_embeddings: cfg.maxPositionEmbeddings,
    max_window_layers: cfg.numLayers,
    model_type: "qwen3",
    num_attention_heads: cfg.numHeads,
    num_hidden_layers: cfg.numLayers,
    num_key_value_heads: cfg.numKvHeads,
    rms_norm_eps: cfg.rmsNormEps,
    rope_scaling: null,
    rope_theta: cfg.ropeTheta,
    sliding_window: null,
    tie_word_embeddings: cfg.tieWordEmbeddings,
    torch_dtype: cfg.torchDtype,
    transformers_version: "4.51.0",
    use_cache: true,
    use_sliding_window: false,
    vocab_size: cfg.vocabSize,
  };
  if (cfg.bosTokenId === undefined) delete out.bos_token_id;
  if (cfg.eosTokenId === undefined) delete out.eos_token_id;
  return out;
}

/** config.json text for this config: {@link qwen3ConfigToJson}, indented by 2, newline-terminated. */
export function formatQwen3Config(cfg: Qwen3Config): string {
  return JSON.stringify(qwen3ConfigToJson(cfg), null, 2) + "\n";
}

/** Reads and parses a config.json file; a missing file or bad JSON is a one-line {@link UserError}. */
export async function loadConfigFile(path: string): Promise<Qwen3Config> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new UserError(`${path}: config file does not exist; check the path or the model dir`);
    }
    if (err instanceof Deno.errors.IsADirectory) {
      throw new UserError(`${path}: is a directory, not a config.json file; point at config.json`);
    }
    throw err;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    const why = err instanceof Error ? err.message.split("\n")[0] : String(err);
    throw new UserError(`${path}: not valid JSON (${why}); fix the file`);
  }
  return parseQwen3Config(json, { file: path });
}
