// Golden parity with an independent float32 PyTorch implementation of HF Qwen3ForCausalLM:
// per-sample R within 1e-4 relative and row-0 logits within 1e-3 absolute, through the library
// (plain and with every weight sharded) and through `deno task eval`.
import { assert, assertClose, assertEquals, fixture, runCli } from "./helpers.ts";
import { acquireGpu } from "../kernels/runtime.ts";
import { openCheckpoint } from "../model/checkpoint.ts";
import { checkpointTensors, uploadWeights } from "../model/device_weights.ts";
import { Qwen3Forward } from "../model/forward.ts";
import { readTokensFile } from "../pipeline/evaluate.ts";

const FIXTURES = ["qwen3-tiny-tied-f32", "qwen3-small-untied-bf16"];

interface Expected {
  per_sample: number[];
  fitness: number;
  logits_row0: number[][];
}

async function expected(name: string): Promise<Expected> {
  return JSON.parse(await Deno.readTextFile(fixture(`${name}/expected.json`)));
}

for (const name of FIXTURES) {
  for (const shardBytes of [undefined, 16384]) {
    const how = shardBytes ? `, every weight sharded into ${shardBytes}-byte shards` : "";
    Deno.test(`${name}: R and row-0 logits match PyTorch through the library${how}`, async () => {
      const want = await expected(name);
      const { batch } = await readTokensFile(fixture(`${name}/tokens.json`));
      const ckpt = await openCheckpoint(fixture(name));
      const gpu = await acquireGpu({ shardBytes });
      try {
        const weights = await uploadWeights(gpu, checkpointTensors(ckpt));
        if (shardBytes) {
          const embed = weights.get("model.embed_tokens.weight")!;
          assert(
            embed.shards.length > 3,
            `embedding should be sharded, has ${embed.shards.length} shards`,
          );
        }
        const T = batch.inputIds[0].length;
        const fwd = new Qwen3Forward(gpu, ckpt.config, weights, {
          maxBatch: batch.inputIds.length,
          maxSeqLen: T,
          debugLogits: true,
          // A small chunk so the streamed log-sum-exp folds several chunks, one of them ragged.
          vocabChunk: 96,
        });
        const r = await fwd.score(batch);
        assertClose(r.perSample, want.per_sample, { atol: 0, rtol: 1e-4 });
        const logits = await fwd.logits(batch, 0);
        assertClose(logits, want.logits_row0.flat(), { atol: 1e-3, rtol: 0 });
      } finally {
        ckpt.close();
        gpu.destroy();
      }
    });
  }

  Deno.test(`${name}: deno task eval prints one JSON object matching PyTorch`, async () => {
    const want = await expected(name);
    const out = await runCli([
      "tools/eval.ts",
      "--model",
      fixture(name),
      "--tokens",
      fixture(`${name}/tokens.json`),
    ]);
    assertEquals(out.code, 0, out.stderr);
    const lines = out.stdout.trim().split("\n");
    assertEquals(lines.length, 1, "stdout must hold exactly one line");
    const res = JSON.parse(lines[0]);
    assertEquals(Object.keys(res).sort(), [
      "backend",
      "device",
      "fitness",
      "per_sample",
      "tokens",
      "tokens_per_s",
    ]);
    assertClose(res.per_sample, want.per_sample, { atol: 0, rtol: 1e-4 });
    assertClose([res.fitness], [want.fitness], { atol: 0, rtol: 1e-4 });
    const { batch } = await readTokensFile(fixture(`${name}/tokens.json`));
    const scored = batch.attentionMask.reduce(
      (n, m) => n + m.slice(1).reduce((a, b) => a + b, 0),
      0,
    );
    assertEquals(res.tokens, scored);
    assert(res.tokens_per_s > 0 && typeof res.device === "string" && res.device.length > 0);
    assert(["webgpu", "cpu"].includes(res.backend), res.backend);
  });
}

Deno.test("eval --batch 1 gives the same R as one batch (padding never leaks across rows)", async () => {
  const name = "qwen3-tiny-tied-f32";
  const want = await expected(name);
  const out = await runCli([
    "tools/eval.ts",
    "--model",
    fixture(name),
    "--tokens",
    fixture(`${name}/tokens.json`),
    "--batch",
    "1",
  ]);
  assertEquals(out.code, 0, out.stderr);
  assertClose(JSON.parse(out.stdout).per_sample, want.per_sample, { atol: 0, rtol: 1e-4 });
});

Deno.test("the float64 CPU reference forward itself matches PyTorch on both fixtures", async () => {
  const { referenceScore } = await import("../model/reference.ts");
  for (const name of FIXTURES) {
    const want = await expected(name);
    const { batch } = await readTokensFile(fixture(`${name}/tokens.json`));
    const ckpt = await openCheckpoint(fixture(name));
    const weights = new Map<string, Float32Array>();
    for (const n of ckpt.tensors.keys()) weights.set(n, await ckpt.read(n));
    ckpt.close();
    const got = referenceScore(ckpt.config, weights, batch, { keepLogits: true });
    assertClose(got.perSample, want.per_sample, { atol: 0, rtol: 1e-5 });
    assertClose(got.logits[0], want.logits_row0.flat(), { atol: 1e-4, rtol: 0 });
  }
});
