/**
 * The Qwen3 model configuration esflow computes with, read from and written to HF config.json.
 *
 * @module
 */

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
  /** bos_token_id, eos_token_id, when given. */
  bosTokenId?: number;
  eosTokenId?: number;
  /** torch_dtype / dtype of the stored weights: "float32", "bfloat16" or "float16". */
  torchDtype: string;
}
