/**
 * The Qwen3 chat template for one user turn, as transformers' apply_chat_template renders the
 * tokenizer config's `chat_template` with add_generation_prompt (thinking left to the model):
 *
 *   <|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n
 *
 * The markers must be single tokens of the tokenizer (its added tokens), and a
 * tokenizer_config.json beside the tokenizer, when there is one, must carry a chat_template that
 * uses them: a tokenizer without them (the byte tokenizer) cannot hold a chat.
 *
 * Tests: tests/generate_cli_test.ts.
 *
 * @module
 */
import { UserError } from "../errors.ts";
import type { Tokenizer } from "./tokenizer.ts";

/** Qwen3's turn markers. */
export const IM_START = "<|im_start|>";
export const IM_END = "<|im_end|>";

/** A chat template for single-turn prompts: the text to encode, and the id that ends a turn. */
export interface ChatTemplate {
  /** The prompt as one user turn followed by the assistant's opening. */
  render(prompt: string): string;
  /** Id of <|im_end|>: generation stops there. */
  endId: number;
}

/**
 * The Qwen3 chat template of `tokenizer`. `config` is its tokenizer_config.json, when it has one
 * (its chat_template is checked to be the <|im_start|> family). A tokenizer that lacks the
 * markers as single tokens is a {@link UserError} naming it and the fix.
 */
export function qwen3ChatTemplate(
  tokenizer: Tokenizer,
  config?: { chat_template?: unknown },
): ChatTemplate {
  const single = (s: string) => {
    const ids = tokenizer.encode(s);
    return ids.length === 1 ? ids[0] : undefined;
  };
  const start = single(IM_START), end = single(IM_END);
  if (start === undefined || end === undefined) {
    throw new UserError(
      `--chat: the ${tokenizer.name} tokenizer has no ${IM_START} and ${IM_END} tokens, so it ` +
        `has no Qwen3 chat template; use --tokenizer qwen3 or a Qwen3 tokenizer.json`,
    );
  }
  const template = config?.chat_template;
  if (typeof template === "string" && !template.includes(IM_START)) {
    throw new UserError(
      `--chat: the chat_template of ${tokenizer.name}'s tokenizer_config.json does not use ` +
        `${IM_START} … ${IM_END}; esflow renders the Qwen3 template only`,
    );
  }
  return {
    render: (prompt) => `${IM_START}user\n${prompt}${IM_END}\n${IM_START}assistant\n`,
    endId: end,
  };
}
