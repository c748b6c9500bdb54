/**
 * Writes the synthetic Caesar-shift task of the reward pipelines (configs/pipelines/reward-tiny*.yaml)
 * into data/caesar/: every word of three letters from a..h becomes the word with each letter
 * moved one on (h wraps to a), "feh" → "gfa".
 *
 *   deno run -A tools/make_caesar.ts [--out data/caesar]
 *
 * - pretrain.txt: 4000 lines "feh=gfa.", for a log-likelihood pipeline to pretrain on
 *   (reward-tiny-pretrain.yaml);
 * - prompts.jsonl: 320 distinct prompts {"prompt": "feh=", "answer": "gfa"} (of the 512 words)
 *   for the reward fitness (reward-tiny.yaml: exact match of the completion up to the "." with
 *   `answer`).
 *
 * Words are drawn with Philox4x32-10 (kernels/philox.ts) under a fixed key, so the files are
 * the same bytes on every machine.
 *
 * @module
 */
import { parseFlags, runMain } from "./cli.ts";
import { philox4x32_10 } from "../kernels/philox.ts";

/** The alphabet of the task: its letters, in shift order. */
export const CAESAR_ALPHABET = "abcdefgh";

/** The word with each letter moved one on in {@link CAESAR_ALPHABET} (the last wraps). */
export function caesarShift(word: string): string {
  const a = CAESAR_ALPHABET;
  return [...word].map((c) => a[(a.indexOf(c) + 1) % a.length]).join("");
}

/** `count` words of `length` letters, drawn from the stream `stream`. */
export function caesarWords(count: number, o: { stream: number; length?: number }): string[] {
  const a = CAESAR_ALPHABET, len = o.length ?? 3, out: string[] = [];
  const words = new Uint32Array(4);
  for (let i = 0; i < count; i++) {
    philox4x32_10([i, o.stream, 0xCAE5A, 0], [2024, 0], words);
    out.push(Array.from({ length: len }, (_, k) => a[words[k] % a.length]).join(""));
  }
  return out;
}

/** Every word of three letters, in the order of a Philox-keyed shuffle. */
export function shuffledWords(): string[] {
  const a = CAESAR_ALPHABET, all: string[] = [];
  for (const x of a) for (const y of a) for (const z of a) all.push(x + y + z);
  const words = new Uint32Array(4);
  for (let i = all.length - 1; i > 0; i--) {
    philox4x32_10([i, 3, 0xCAE5A, 0], [2024, 0], words);
    const j = words[0] % (i + 1);
    [all[i], all[j]] = [all[j], all[i]];
  }
  return all;
}

/** The two files' text. */
export function caesarTask(): { pretrain: string; prompts: string } {
  const pretrain = caesarWords(4000, { stream: 1 }).map((w) => `${w}=${caesarShift(w)}.`);
  const prompts = shuffledWords().slice(0, 320).map((w) =>
    JSON.stringify({ prompt: `${w}=`, answer: caesarShift(w) })
  );
  return { pretrain: pretrain.join("\n") + "\n", prompts: prompts.join("\n") + "\n" };
}

if (import.meta.main) {
  await runMain("make_caesar", async () => {
    const { values } = parseFlags(
      Deno.args,
      { out: { type: "string" } },
      "make_caesar.ts [--out DIR]",
    );
    const out = values.out ?? new URL("../data/caesar", import.meta.url).pathname;
    await Deno.mkdir(out, { recursive: true });
    const task = caesarTask();
    await Deno.writeTextFile(`${out}/pretrain.txt`, task.pretrain);
    await Deno.writeTextFile(`${out}/prompts.jsonl`, task.prompts);
    console.log(`wrote ${out}/pretrain.txt and ${out}/prompts.jsonl`);
  });
}
