// `deno task eval` on bad input: one line on stderr naming the fault, exit code 2, no stack trace.
// And on text: bytes and Qwen3 tokenizers end to end, with `--backend` webgpu and cpu.
import {
  assert,
  assertClose,
  assertEquals,
  fixture,
  runCli,
  tempDir,
  testBackends,
} from "./helpers.ts";

const TINY = fixture("qwen3-tiny-tied-f32");

async function expectUserError(args: string[], pattern: RegExp): Promise<void> {
  const out = await runCli(["tools/eval.ts", ...args]);
  assertEquals(out.code, 2, `exit code for ${args.join(" ")}; stderr: ${out.stderr}`);
  assertEquals(out.stdout, "", "nothing on stdout");
  const lines = out.stderr.trim().split("\n");
  assertEquals(lines.length, 1, `one line on stderr, got:\n${out.stderr}`);
  assert(pattern.test(lines[0]), `stderr ${JSON.stringify(lines[0])} should match ${pattern}`);
  assert(!/\bat .*:\d+:\d+/.test(out.stderr), "no stack trace");
}

Deno.test("eval: a missing model dir", async () => {
  await expectUserError([
    "--model",
    "/nonexistent/model",
    "--tokens",
    fixture("qwen3-tiny-tied-f32/tokens.json"),
  ], /\/nonexistent\/model/);
});

Deno.test("eval: an unknown model_type", async () => {
  const dir = await tempDir("esflow-eval-");
  const cfg = JSON.parse(await Deno.readTextFile(`${TINY}/config.json`));
  cfg.model_type = "llama";
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(cfg));
  await Deno.copyFile(`${TINY}/model.safetensors`, `${dir}/model.safetensors`);
  await expectUserError(["--model", dir, "--tokens", `${TINY}/tokens.json`], /model_type.*llama/);
});

Deno.test("eval: a token id ≥ vocab_size", async () => {
  const dir = await tempDir("esflow-eval-");
  await Deno.writeTextFile(
    `${dir}/t.json`,
    JSON.stringify({ input_ids: [[1, 2, 256]], attention_mask: [[1, 1, 1]] }),
  );
  await expectUserError(
    ["--model", TINY, "--tokens", `${dir}/t.json`],
    /token id 256 .*vocabulary/,
  );
});

Deno.test("eval: ids and mask of different lengths", async () => {
  const dir = await tempDir("esflow-eval-");
  await Deno.writeTextFile(
    `${dir}/t.json`,
    JSON.stringify({ input_ids: [[1, 2, 3]], attention_mask: [[1, 1]] }),
  );
  await expectUserError(["--model", TINY, "--tokens", `${dir}/t.json`], /different lengths/);
});

Deno.test("eval: empty text", async () => {
  const dir = await tempDir("esflow-eval-");
  await Deno.writeTextFile(`${dir}/empty.txt`, "\n  \n\n");
  await expectUserError(["--model", TINY, "--text", `${dir}/empty.txt`], /empty\.txt/);
});

Deno.test("eval: flags — neither input, and an unknown flag", async () => {
  await expectUserError(["--model", TINY], /--tokens.*--text/);
  await expectUserError(
    ["--model", TINY, "--tokens", `${TINY}/tokens.json`, "--bogus", "1"],
    /bogus/,
  );
});

Deno.test("eval: an unknown --backend names the choices", async () => {
  await expectUserError(
    ["--model", TINY, "--tokens", `${TINY}/tokens.json`, "--backend", "gpu"],
    /--backend.*"gpu".*auto, webgpu, cpu/,
  );
});

Deno.test("eval: a tokenizer larger than the model's vocabulary", async () => {
  const dir = await tempDir("esflow-eval-");
  await Deno.writeTextFile(`${dir}/a.txt`, "It is a truth universally acknowledged.\n");
  await expectUserError(
    ["--model", TINY, "--text", `${dir}/a.txt`, "--tokenizer", "qwen3"],
    /151669.*vocab_size 256/,
  );
});

testBackends("eval: text through the byte tokenizer scores every line", async (backend) => {
  const dir = await tempDir("esflow-eval-");
  const lines = ["It is a truth universally acknowledged,", "that a single man in possession", "x"];
  await Deno.writeTextFile(`${dir}/a.txt`, lines.join("\n") + "\n");
  const out = await runCli([
    "tools/eval.ts",
    "--model",
    TINY,
    "--text",
    `${dir}/a.txt`,
    "--max-len",
    "16",
    "--batch",
    "2",
    "--backend",
    backend,
  ]);
  assertEquals(out.code, 0, out.stderr);
  const res = JSON.parse(out.stdout);
  assertEquals(res.backend, backend);
  // "x" has one byte, so no next token: it is skipped. The others are cut to 16 bytes.
  assertEquals(res.per_sample.length, 2);
  assertEquals(res.tokens, 15 + 15);
  for (const r of res.per_sample) {
    assert(r < 0 && r > -20, `R ${r} should be a mean log-probability`);
  }
});

testBackends(
  "eval: the real Qwen3 tokenizer and a 151936-id vocabulary, streamed in chunks",
  async (backend) => {
    const { getPreset } = await import("../model/presets.ts");
    const { randomInit } = await import("../model/weights.ts");
    const { saveCheckpoint } = await import("../model/checkpoint.ts");
    const dir = await tempDir("esflow-eval-");
    // A narrow model with Qwen3's vocabulary: its LM head alone is 151936 × 32 floats.
    const config = {
      ...getPreset("tiny-qwen3vocab"),
      hiddenSize: 32,
      intermediateSize: 64,
      numLayers: 1,
      headDim: 16,
    };
    await saveCheckpoint(`${dir}/m`, { config, tensors: randomInit(config, { seed: 3 }) });
    const line = "It is a truth universally acknowledged, that a single man";
    await Deno.writeTextFile(`${dir}/a.txt`, line + "\n");
    const { loadTokenizer } = await import("../tokenizers/mod.ts");
    const n = (await loadTokenizer("qwen3")).encode(line).length;
    assert(n < line.length / 2, `BPE should merge bytes: ${n} tokens for ${line.length} chars`);
    const out = await runCli([
      "tools/eval.ts",
      "--model",
      `${dir}/m`,
      "--text",
      `${dir}/a.txt`,
      "--tokenizer",
      "qwen3",
      "--shard-bytes",
      String(4 << 20),
      "--backend",
      backend,
    ]);
    assertEquals(out.code, 0, out.stderr);
    const res = JSON.parse(out.stdout);
    assertEquals(res.backend, backend);
    assertEquals(res.tokens, n - 1);
    // Against the float64 CPU reference forward on the same weights and ids.
    const { referenceScore } = await import("../model/reference.ts");
    const weights = new Map([...randomInit(config, { seed: 3 })].map((t) => [t.name, t.data]));
    const ids = (await loadTokenizer("qwen3")).encode(line);
    const want = referenceScore(config, weights, {
      inputIds: [ids],
      attentionMask: [ids.map(() => 1)],
    });
    assertClose(res.per_sample, want.perSample, { atol: 0, rtol: 1e-4 });
  },
);
