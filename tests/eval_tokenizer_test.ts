// Checkpoints carry their tokenizer (issue 14, item 2): train writes tokenizer.json,
// tokenizer_config.json and generation_config.json beside config.json; `deno task eval --text`
// then reads text with the model's own tokenizer by default, and a `--tokenizer` that disagrees
// is one line and exit 2 unless `--allow-tokenizer-change`. A model that names no tokenizer
// and is not a 256-id byte model asks for one instead of silently using bytes.
import { assert, assertEquals, runCli, withTempDir } from "./helpers.ts";
import { getPreset } from "../model/presets.ts";
import { randomInit } from "../model/weights.ts";
import { saveCheckpoint } from "../model/checkpoint.ts";
import { loadTokenizer } from "../tokenizers/mod.ts";
import { oneLine, train, writeSmoke } from "./reliability_helpers.ts";

const LINE = "It is a truth universally acknowledged, that a single man in possession";

async function evalText(args: string[]) {
  const r = await runCli(["tools/eval.ts", ...args, "--backend", "cpu"]);
  return { ...r, signal: null, json: r.code === 0 ? JSON.parse(r.stdout) : null };
}

Deno.test("eval: a trained checkpoint's own tokenizer is the default; another one is refused", async () => {
  await withTempDir(async (dir) => {
    const file = await writeSmoke(dir, { checkpointEvery: 1 });
    const t = await train([file, "--iterations", "2", "--out", `${dir}/run`]);
    assertEquals(t.code, 0, t.stderr);
    for (const ck of [`${dir}/run/checkpoints/iter-1`, `${dir}/run/final`]) {
      for (const f of ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]) {
        await Deno.stat(`${ck}/${f}`);
      }
    }
    await Deno.writeTextFile(`${dir}/a.txt`, LINE + "\n");
    const own = await evalText(["--model", `${dir}/run/final`, "--text", `${dir}/a.txt`]);
    assertEquals(own.code, 0, own.stderr);
    assertEquals(own.json.tokens, new TextEncoder().encode(LINE).length - 1, "bytes, as trained");
    // The same tokenizer named: fine, the same scores.
    const same = await evalText([
      "--model",
      `${dir}/run/final`,
      "--text",
      `${dir}/a.txt`,
      "--tokenizer",
      "bytes",
    ]);
    assertEquals(same.json?.per_sample, own.json.per_sample, same.stderr);
    // Another tokenizer (a tokenizer.json that is not the model's): one line, exit 2.
    await Deno.mkdir(`${dir}/other`);
    await Deno.writeTextFile(
      `${dir}/other/tokenizer.json`,
      JSON.stringify({
        model: { type: "WordLevel", vocab: { "[UNK]": 0, It: 1, is: 2, a: 3 }, unk_token: "[UNK]" },
        pre_tokenizer: { type: "Whitespace" },
      }),
    );
    const other = await evalText([
      "--model",
      `${dir}/run/final`,
      "--text",
      `${dir}/a.txt`,
      "--tokenizer",
      `${dir}/other`,
    ]);
    oneLine(other, {
      says: [`${dir}/run/final/tokenizer.json`, "--allow-tokenizer-change", "drop --tokenizer"],
    });
    // The named override scores with it anyway.
    const forced = await evalText([
      "--model",
      `${dir}/run/final`,
      "--text",
      `${dir}/a.txt`,
      "--tokenizer",
      `${dir}/other`,
      "--allow-tokenizer-change",
    ]);
    assertEquals(forced.code, 0, forced.stderr);
    assert(forced.json.tokens < own.json.tokens, "scored with the word-level tokenizer");
  });
});

Deno.test("eval: a Qwen3-vocabulary checkpoint is read with the qwen3 tokenizer it carries", async () => {
  await withTempDir(async (dir) => {
    // A narrow model with Qwen3's vocabulary, saved with its tokenizer as train saves it.
    const config = {
      ...getPreset("tiny-qwen3vocab"),
      hiddenSize: 32,
      intermediateSize: 64,
      numLayers: 1,
      headDim: 16,
    };
    const qwen3 = await loadTokenizer("qwen3");
    await saveCheckpoint(`${dir}/m`, {
      config,
      tensors: randomInit(config, { seed: 3 }),
      tokenizer: qwen3,
    });
    await Deno.writeTextFile(`${dir}/a.txt`, LINE + "\n");
    const r = await evalText(["--model", `${dir}/m`, "--text", `${dir}/a.txt`]);
    assertEquals(r.code, 0, r.stderr);
    assertEquals(r.json.tokens, qwen3.encode(LINE).length - 1, "BPE tokens, not bytes");
    const named = await evalText([
      "--model",
      `${dir}/m`,
      "--text",
      `${dir}/a.txt`,
      "--tokenizer",
      "qwen3",
    ]);
    assertEquals(named.json?.per_sample, r.json.per_sample, named.stderr);
    const bytes = await evalText([
      "--model",
      `${dir}/m`,
      "--text",
      `${dir}/a.txt`,
      "--tokenizer",
      "bytes",
    ]);
    oneLine(bytes, { says: ["--tokenizer bytes is not the tokenizer of the model"] });

    // The same weights without tokenizer files: no silent bytes for a 151936-id model.
    await saveCheckpoint(`${dir}/bare`, { config, tensors: randomInit(config, { seed: 3 }) });
    const bare = await evalText(["--model", `${dir}/bare`, "--text", `${dir}/a.txt`]);
    oneLine(bare, { says: ["carries no tokenizer", "vocab_size 151936", "give --tokenizer"] });
  });
});

Deno.test("eval: a checkpoint of an older esflow names its tokenizer in state.json", async () => {
  await withTempDir(async (dir) => {
    const config = { ...getPreset("micro"), vocabSize: 16384 };
    await saveCheckpoint(`${dir}/m`, {
      config,
      tensors: randomInit(config, { seed: 3 }),
      files: {
        "state.json": JSON.stringify({ iteration: 1, pipeline: { tokenizer: { type: "bytes" } } }),
      },
    });
    await Deno.writeTextFile(`${dir}/a.txt`, LINE + "\n");
    const r = await evalText(["--model", `${dir}/m`, "--text", `${dir}/a.txt`]);
    assertEquals(r.code, 0, r.stderr);
    assertEquals(r.json.tokens, new TextEncoder().encode(LINE).length - 1);
    const q = await evalText([
      "--model",
      `${dir}/m`,
      "--text",
      `${dir}/a.txt`,
      "--tokenizer",
      "qwen3",
    ]);
    oneLine(q, { says: ["state.json (tokenizer: bytes)"] });
  });
});
