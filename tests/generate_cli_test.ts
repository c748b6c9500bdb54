// `deno task generate` end to end on a small saved checkpoint: the streamed text and the --json
// line agree, --prompts prints one object per prompt equal to each prompt generated alone,
// sampling is seeded, the Qwen3 chat template, and bad input is one line with exit code 2.
import { assert, assertEquals, randn, runCli, seeded, withTempDir } from "./helpers.ts";
import { saveCheckpoint } from "../model/checkpoint.ts";
import { getPreset } from "../model/presets.ts";
import { qwen3TensorSpecs } from "../model/weights.ts";
import { loadTokenizer } from "../tokenizers/mod.ts";
import { qwen3ChatTemplate } from "../tokenizers/chat.ts";
import { parsePromptIds } from "../pipeline/generate.ts";

/** The micro preset with weights large enough that greedy choices are far from ties. */
async function saveModel(dir: string): Promise<void> {
  const config = getPreset("micro"), rng = seeded(3);
  await saveCheckpoint(dir, {
    config,
    tensors: qwen3TensorSpecs(config).map((s) => {
      const n = s.shape.reduce((a, b) => a * b, 1);
      const data = s.name.endsWith("norm.weight")
        ? Float32Array.from(randn(rng, n, 0.1), (v) => 1 + v)
        : randn(rng, n, s.name.includes("embed") ? 1 : 0.2);
      return { name: s.name, shape: s.shape, data };
    }),
  });
}

const GENERATE = "tools/generate.ts";

/** The --json objects: the last `n` lines of stdout. */
function objects(stdout: string, n: number) {
  const lines = stdout.trimEnd().split("\n");
  return lines.slice(-n).map((l) => JSON.parse(l));
}

Deno.test("generate: the streamed text is the --json text, greedy and seeded", async () => {
  await withTempDir(async (dir) => {
    const model = `${dir}/m`;
    await saveModel(model);
    const run = (...args: string[]) =>
      runCli([GENERATE, "--model", model, "--backend", "cpu", ...args]);
    const a = await run("--prompt", "To be, or not", "--max-new-tokens", "12", "--json");
    assertEquals(a.code, 0, a.stderr);
    const [o] = objects(a.stdout, 1);
    assertEquals(o.new_ids.length, 12);
    assertEquals(o.text, (await loadTokenizer("bytes")).decode(o.new_ids));
    assertEquals(o.backend, "cpu");
    assert(typeof o.device === "string" && o.tokens_per_s > 0, JSON.stringify(o));
    // Everything before the JSON line is the streamed text (and the newline ending it).
    const streamed = a.stdout.slice(0, a.stdout.trimEnd().lastIndexOf("\n") + 1);
    assertEquals(streamed.replace(/\n$/, ""), o.text.replace(/\n$/, ""));
    // The same prompt as ids gives the same tokens.
    const ids = Array.from(new TextEncoder().encode("To be, or not")).join(",");
    const b = await run("--prompt-ids", ids, "--max-new-tokens", "12", "--json");
    assertEquals(objects(b.stdout, 1)[0].new_ids, o.new_ids);
    // Seeded sampling: the same seed, the same tokens; another seed, others.
    const s1 = await run("--prompt", "abc", "--temperature", "2", "--seed", "5", "--json");
    const s2 = await run("--prompt", "abc", "--temperature", "2", "--seed", "5", "--json");
    const s3 = await run("--prompt", "abc", "--temperature", "2", "--seed", "6", "--json");
    assertEquals(objects(s1.stdout, 1)[0].new_ids, objects(s2.stdout, 1)[0].new_ids);
    assert(
      JSON.stringify(objects(s1.stdout, 1)[0].new_ids) !==
        JSON.stringify(objects(s3.stdout, 1)[0].new_ids),
      "seeds 5 and 6 sampled the same tokens",
    );
  });
});

Deno.test("generate: --prompts prints one object per prompt, as each prompt alone", async () => {
  await withTempDir(async (dir) => {
    const model = `${dir}/m`;
    await saveModel(model);
    const prompts = ["a", "The quick brown fox", "12+7="];
    await Deno.writeTextFile(
      `${dir}/p.jsonl`,
      prompts.map((p) => JSON.stringify({ prompt: p })).join("\n") + "\n",
    );
    for (const backend of ["cpu", "webgpu"]) {
      const run = (...args: string[]) =>
        runCli([
          GENERATE,
          "--model",
          model,
          "--backend",
          backend,
          "--max-new-tokens",
          "9",
          ...args,
        ]);
      const all = await run("--prompts", `${dir}/p.jsonl`, "--json");
      assertEquals(all.code, 0, all.stderr);
      const got = objects(all.stdout, 3);
      for (const [i, p] of prompts.entries()) {
        const one = await run("--prompt", p, "--json");
        assertEquals(got[i].new_ids, objects(one.stdout, 1)[0].new_ids, `${backend}: prompt ${i}`);
        assertEquals(got[i].backend, backend);
      }
    }
  });
});

Deno.test("generate: bad input is one line and exit code 2", async () => {
  await withTempDir(async (dir) => {
    const model = `${dir}/m`;
    await saveModel(model);
    await Deno.writeTextFile(`${dir}/bad.jsonl`, '{"prompt": "ok"}\n{"text": "no prompt"}\n');
    for (
      const [args, part] of [
        [["--prompt", "x"], "--model DIR is required"],
        [["--model", model], "exactly one of --prompt"],
        [["--model", model, "--prompt", "x", "--prompt-ids", "1"], "exactly one of --prompt"],
        [["--model", model, "--prompt-ids", "1,x"], '"x" is not one'],
        [["--model", model, "--prompt-ids", "1,300"], "outside the model's vocabulary"],
        [["--model", model, "--prompt", "x", "--temperature", "-1"], "--temperature must be"],
        [["--model", model, "--prompt", "x", "--top-p", "2"], "--top-p must be"],
        [["--model", model, "--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens"],
        [["--model", model, "--prompt", "x", "--chat"], "has no <|im_start|>"],
        [["--model", model, "--prompts", `${dir}/bad.jsonl`], "bad.jsonl:2"],
        [["--model", `${dir}/none`, "--prompt", "x"], "does not exist"],
        [
          ["--model", model, "--prompt", "x", "--max-new-tokens", "5000"],
          "max_position_embeddings",
        ],
      ] as const
    ) {
      const r = await runCli([GENERATE, "--backend", "cpu", ...args]);
      assertEquals(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      const lines = r.stderr.trim().split("\n");
      assertEquals(lines.length, 1, r.stderr);
      assert(lines[0].includes(part), `${args.join(" ")}: "${lines[0]}" lacks "${part}"`);
    }
  });
});

Deno.test("the Qwen3 chat template: <|im_start|> turns, ending at <|im_end|>", async () => {
  const tok = await loadTokenizer("qwen3");
  const chat = qwen3ChatTemplate(tok, { chat_template: "{{ '<|im_start|>' }}" });
  const text = chat.render("What is 2+2?");
  assertEquals(text, "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n");
  const ids = tok.encode(text);
  assertEquals(ids[0], 151644);
  assertEquals(chat.endId, 151645);
  assertEquals(ids.filter((i) => i === 151644).length, 2);
  assertEquals(parsePromptIds("1, 2,3"), [1, 2, 3]);
});
