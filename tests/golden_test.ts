// Golden parity with an independent float32 PyTorch implementation of HF Qwen3ForCausalLM, on
// both backends: per-sample R and their mean F within 1e-5 relative and row-0 logits within 1e-4
// absolute, through the library (plain and with every weight sharded) and through
// `deno task eval --backend B`. Measured: R within 1.4e-7 and logits within 1e-5 on lavapipe and
// on the CPU backend, so the bounds leave two orders of headroom for another GPU's rounding.
import {
  assert,
  assertClose,
  assertEquals,
  fixture,
  runCli,
  testBackends,
  withDevice,
} from "./helpers.ts";
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

function mean(xs: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < xs.length; i++) s += xs[i];
  return s / xs.length;
}

async function expected(name: string): Promise<Expected> {
  return JSON.parse(await Deno.readTextFile(fixture(`${name}/expected.json`)));
}

for (const name of FIXTURES) {
  for (const shardBytes of [undefined, 16384]) {
    const how = shardBytes ? `, every weight sharded into ${shardBytes}-byte shards` : "";
    testBackends(
      `${name}: R and row-0 logits match PyTorch through the library${how}`,
      async (backend) => {
        const want = await expected(name);
        const { batch } = await readTokensFile(fixture(`${name}/tokens.json`));
        const ckpt = await openCheckpoint(fixture(name));
        try {
          await withDevice(backend, { shardBytes }, async (gpu) => {
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
            assertClose(r.perSample, want.per_sample, { atol: 0, rtol: 1e-5 });
            assertClose([mean(r.perSample)], [want.fitness], { atol: 0, rtol: 1e-5 });
            const logits = await fwd.logits(batch, 0);
            assertClose(logits, want.logits_row0.flat(), { atol: 1e-4, rtol: 0 });
          });
        } finally {
          ckpt.close();
        }
      },
    );
  }

  testBackends(
    `${name}: deno task eval --backend prints one JSON object matching PyTorch`,
    async (backend) => {
      const want = await expected(name);
      const out = await runCli([
        "tools/eval.ts",
        "--model",
        fixture(name),
        "--tokens",
        fixture(`${name}/tokens.json`),
        "--backend",
        backend,
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
      assertClose(res.per_sample, want.per_sample, { atol: 0, rtol: 1e-5 });
      assertClose([res.fitness], [want.fitness], { atol: 0, rtol: 1e-5 });
      const { batch } = await readTokensFile(fixture(`${name}/tokens.json`));
      const scored = batch.attentionMask.reduce(
        (n, m) => n + m.slice(1).reduce((a, b) => a + b, 0),
        0,
      );
      assertEquals(res.tokens, scored);
      assert(res.tokens_per_s > 0 && typeof res.device === "string" && res.device.length > 0);
      assertEquals(res.backend, backend);
    },
  );
}

testBackends(
  "eval --batch 1 gives the same R as one batch (padding never leaks across rows)",
  async (backend) => {
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
      "--backend",
      backend,
    ]);
    assertEquals(out.code, 0, out.stderr);
    assertClose(JSON.parse(out.stdout).per_sample, want.per_sample, { atol: 0, rtol: 1e-5 });
  },
);

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
