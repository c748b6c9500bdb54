// Generation with the KV cache (model/decode.ts) on both backends: greedy tokens equal the
// float64 reference forward's (model/reference.ts, the whole sequence recomputed each step) up
// to the first step where the reference's top two logits are within float32 noise; ragged
// prompts in several prefill chunks; GQA, MQA, head_dim ≠ hidden/heads, tied and untied heads,
// attention biases, a sharded vocabulary; EOS ids and stop strings; seeded sampling.
import type { Backend } from "../kernels/device.ts";
import { assert, assertEquals, randn, seeded, testBackends, withDevice } from "./helpers.ts";
import type { Qwen3Config } from "../model/config.ts";
import { qwen3TensorSpecs } from "../model/weights.ts";
import { uploadWeights } from "../model/device_weights.ts";
import { referenceScore } from "../model/reference.ts";
import { Qwen3Decoder } from "../model/decode.ts";

function config(o: Partial<Qwen3Config>): Qwen3Config {
  return {
    vocabSize: 97,
    hiddenSize: 32,
    intermediateSize: 48,
    numLayers: 2,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 12,
    maxPositionEmbeddings: 128,
    rmsNormEps: 1e-6,
    ropeTheta: 10000,
    tieWordEmbeddings: true,
    attentionBias: false,
    initializerRange: 0.02,
    torchDtype: "float32",
    ...o,
  };
}

/** Weights large enough that the logits spread out (a 0.02 init gives near-ties everywhere). */
function weightsOf(c: Qwen3Config, seed: number): Map<string, Float32Array> {
  const rng = seeded(seed), w = new Map<string, Float32Array>();
  for (const s of qwen3TensorSpecs(c)) {
    const n = s.shape.reduce((a, b) => a * b, 1);
    if (s.shape.length === 1 && s.name.endsWith("norm.weight")) {
      w.set(s.name, Float32Array.from(randn(rng, n, 0.1), (v) => 1 + v));
    } else {
      w.set(s.name, randn(rng, n, s.name.includes("embed") ? 1 : 0.25));
    }
  }
  return w;
}

/** Tensors with their shapes, as a stream for uploadWeights. */
function stream(c: Qwen3Config, w: Map<string, Float32Array>) {
  return qwen3TensorSpecs(c).map((s) => ({ name: s.name, shape: s.shape, data: w.get(s.name)! }));
}

/**
 * The reference's greedy continuation of `prompt`, step by step, with each step's gap between
 * its top two logits.
 */
function referenceGreedy(
  c: Qwen3Config,
  w: Map<string, Float32Array>,
  prompt: number[],
  steps: number,
): { ids: number[]; gaps: number[] } {
  const seq = [...prompt], ids: number[] = [], gaps: number[] = [];
  for (let k = 0; k < steps; k++) {
    const { logits } = referenceScore(c, w, {
      inputIds: [seq],
      attentionMask: [seq.map(() => 1)],
    }, { keepLogits: true });
    const V = c.vocabSize, row = logits[0].subarray((seq.length - 1) * V, seq.length * V);
    let best = 0;
    for (let i = 1; i < V; i++) if (row[i] > row[best]) best = i;
    let second = -Infinity;
    for (let i = 0; i < V; i++) if (i !== best) second = Math.max(second, row[i]);
    ids.push(best);
    gaps.push(row[best] - second);
    seq.push(best);
  }
  return { ids, gaps };
}

/** Logit gaps below this are float32 noise: the two backends' sums may order the tie either way. */
const NOISE = 1e-3;

const PROMPTS = [[5], [11, 3, 40, 2, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 60]];

for (
  const [name, c, shardBytes] of [
    ["tied, GQA, head_dim ≠ hidden/heads", config({}), undefined],
    [
      "untied, MQA, attention biases, a sharded head",
      config({ tieWordEmbeddings: false, numKvHeads: 1, attentionBias: true, vocabSize: 131 }),
      // The head (131 × 32 f32) in 4 row shards of 32 rows: the logits gathered from pieces.
      32 * 32 * 4,
    ],
  ] as const
) {
  testBackends(`greedy decoding equals the float64 reference (${name})`, async (backend) => {
    const w = weightsOf(c, 7);
    const steps = 12;
    const want = PROMPTS.map((p) => referenceGreedy(c, w, p, steps));
    await withDevice(backend as Backend, { shardBytes }, async (d) => {
      const weights = await uploadWeights(d, stream(c, w));
      const dec = new Qwen3Decoder(d, c, weights, {
        maxBatch: 4,
        maxSeqLen: 11 + steps,
        prefillChunk: 4,
      });
      const got = await dec.generate(PROMPTS, { maxNewTokens: steps });
      let compared = 0;
      got.sequences.forEach((g, i) => {
        assertEquals(g.finish, "length");
        assertEquals(g.newIds.length, steps);
        for (let k = 0; k < steps; k++) {
          assertEquals(g.newIds[k], want[i].ids[k], `prompt ${i}, step ${k}`);
          compared++;
          if (want[i].gaps[k] < NOISE) break;
        }
      });
      assert(compared >= 24, `only ${compared} tokens were above float32 noise`);
      dec.destroy();
    });
  });
}

testBackends("EOS ids and stop strings end their sequence; the others go on", async (backend) => {
  const c = config({}), w = weightsOf(c, 8);
  await withDevice(backend, {}, async (d) => {
    const dec = new Qwen3Decoder(d, c, await uploadWeights(d, stream(c, w)), {
      maxBatch: 3,
      maxSeqLen: 30,
    });
    const free = await dec.generate(PROMPTS, { maxNewTokens: 10 });
    const letters = (ids: number[]) => ids.map((i) => String.fromCharCode(33 + i)).join("");
    // Prompt 0 stops at its third token as an EOS; prompt 1 at the text of its tokens 2 and 3.
    const eos = free.sequences[0].newIds[2];
    const stop = letters(free.sequences[1].newIds.slice(2, 4));
    const got = await dec.generate(PROMPTS, {
      maxNewTokens: 10,
      stopIds: [eos],
      stopStrings: [stop],
      decode: letters,
    });
    const [a, b, rest] = got.sequences;
    const firstEos = free.sequences[0].newIds.indexOf(eos);
    assertEquals(a.finish, "eos");
    assertEquals(a.newIds, free.sequences[0].newIds.slice(0, firstEos + 1));
    assertEquals(a.text, letters(a.newIds.slice(0, -1)));
    assertEquals(b.finish, "stop");
    const full = letters(free.sequences[1].newIds);
    assertEquals(b.text, full.slice(0, full.indexOf(stop)));
    // The third runs to max_new_tokens unless it met the stops itself.
    if (rest.finish === "length") assertEquals(rest.newIds, free.sequences[2].newIds);
    dec.destroy();
  });
});

testBackends(
  "seeded sampling: the same seed gives the same tokens, top-k 1 is greedy",
  async (backend) => {
    const c = config({}), w = weightsOf(c, 9);
    await withDevice(backend, {}, async (d) => {
      const dec = new Qwen3Decoder(d, c, await uploadWeights(d, stream(c, w)), {
        maxBatch: 3,
        maxSeqLen: 30,
      });
      const sample = (seed: number, extra = {}) =>
        dec.generate(PROMPTS, {
          maxNewTokens: 12,
          sampling: { temperature: 1.5, seed, ...extra },
        }).then((r) => r.sequences.map((s) => s.newIds));
      const a = await sample(1), b = await sample(1), other = await sample(2);
      assertEquals(a, b);
      assert(JSON.stringify(a) !== JSON.stringify(other), "seeds 1 and 2 sampled the same tokens");
      const greedy = (await dec.generate(PROMPTS, { maxNewTokens: 12 })).sequences.map((s) =>
        s.newIds
      );
      assertEquals(await sample(3, { topK: 1 }), greedy);
      assertEquals(await sample(4, { topP: 1e-9 }), greedy);
      dec.destroy();
    });
  },
);
