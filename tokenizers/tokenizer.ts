/**
 * What every tokenizer is: text to token ids and back (tokenizers/mod.ts loads one by name).
 *
 * @module
 */

/** Text to token ids and back. Encoding adds no special tokens: we score raw text. */
export interface Tokenizer {
  /** "bytes", "qwen3", or the path of the tokenizer.json. */
  name: string;
  /** Highest id + 1, added tokens included. A model's embedding may have more rows (padding). */
  vocabSize: number;
  /** Token ids of `text`, with no BOS/EOS added. */
  encode(text: string): number[];
  /** Text of `ids`; throws a RangeError for an id outside 0..vocabSize-1. */
  decode(ids: number[]): string;
  /** Id that fills the tail of a ragged batch. */
  padId: number;
  /** Beginning-of-sequence id, when the tokenizer has one. */
  bosId?: number;
  /** End-of-sequence id, when the tokenizer has one. */
  eosId?: number;
  /**
   * Where its files come from, so a checkpoint can carry them (tokenizers/pretrained.ts): the
   * built-in bytes, or a tokenizer.json (and its tokenizer_config.json) on disk. Absent for a
   * tokenizer built in memory; its checkpoints then carry no tokenizer.
   */
  files?: { kind: "bytes" } | { kind: "hf"; tokenizerJson: string; config?: string };
}
