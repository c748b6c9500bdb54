/**
 * The built-in byte-level tokenizer: one token per UTF-8 byte, so it needs no file and covers any
 * text. It is the tokenizer for tiny test models and for runs that want no vocabulary at all.
 *
 * @module
 */

import type { Tokenizer } from "./tokenizer.ts";

/** Number of ids of the byte tokenizer: one per byte value. */
export const BYTES_VOCAB_SIZE = 256;

/**
 * Makes the byte-level tokenizer: `encode` gives the UTF-8 bytes of the text as ids 0..255 and
 * `decode` reads them back, so `decode(encode(s)) === s` for every well-formed string. (A lone
 * UTF-16 surrogate has no UTF-8 form; TextEncoder writes it as U+FFFD, as every UTF-8 path does.)
 * Id 0 (the NUL byte) doubles as padding; there are no BOS or EOS tokens.
 */
export function createBytesTokenizer(): Tokenizer {
  const encoder = new TextEncoder();
  // Not fatal: a slice of ids that cuts a multi-byte character must still decode (to U+FFFD),
  // e.g. when printing the bytes of one token.
  const decoder = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
  return {
    name: "bytes",
    vocabSize: BYTES_VOCAB_SIZE,
    padId: 0,
    files: { kind: "bytes" },
    encode: (text) => Array.from(encoder.encode(text)),
    decode(ids) {
      const bytes = new Uint8Array(ids.length);
      for (let i = 0; i < ids.length; i++) {
        const id = ids[i];
        if (!Number.isInteger(id) || id < 0 || id >= BYTES_VOCAB_SIZE) {
          throw new RangeError(`bytes tokenizer: id ${id} at position ${i} is not in 0..255`);
        }
        bytes[i] = id;
      }
      return decoder.decode(bytes);
    },
  };
}
