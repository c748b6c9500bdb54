// A one-off eval at Qwen3's real vocabulary compiles little on lavapipe: the LM head in equal
// vocabulary chunks that share one pipeline, and tiles chosen for cold compile plus run time over
// the eval's few runs rather than for speed alone (a 32×16 tile takes lavapipe ~7 s to compile
// and ~1 ms to run a 336×128×128 matmul), and the head reads only the rows that are scored. The
// scores stay the CPU backend's, and the same bytes as a head over every row.
import { assert, assertClose, assertEquals, fixture, testBackends, withDevice } from "./helpers.ts";
import type { Dispatch } from "../kernels/device.ts";
import { defaultMatmulSwigluTile, defaultMatmulTile } from "../kernels/matmul.ts";
import { defaultQueryBlock } from "../kernels/attention.ts";
import { checkpointTensors, uploadWeights } from "../model/device_weights.ts";
import { openCheckpoint } from "../model/checkpoint.ts";
import { getPreset } from "../model/presets.ts";
import { randomInit } from "../model/weights.ts";
import { evalForward, lmHeadChunk, shapedMicroBatches } from "../pipeline/evaluate.ts";
import { Qwen3Forward, type TokenBatch } from "../model/forward.ts";

/** Runs `fn` with the tile cache off, so a tuned tile on this machine cannot stand in. */
async function withoutTileCache<T>(fn: () => Promise<T>): Promise<T> {
  const before = Deno.env.get("ESFLOW_TILE_CACHE");
  Deno.env.set("ESFLOW_TILE_CACHE", "off");
  try {
    return await fn();
  } finally {
    if (before === undefined) Deno.env.delete("ESFLOW_TILE_CACHE");
    else Deno.env.set("ESFLOW_TILE_CACHE", before);
  }
}

const isLavapipe = (name: string) => /llvmpipe|lavapipe/i.test(name);

Deno.test("lmHeadChunk: equal chunks where a count near the fewest divides the vocabulary", async () => {
  await withDevice("webgpu", {}, (gpu) => {
    const config = { ...getPreset("tiny"), vocabSize: 151936 };
    const rows = 16 * 21;
    // At most 32768 columns: 5 chunks at the fewest, and 8 is the first count that divides.
    assertEquals(lmHeadChunk(gpu, config, rows), 18992);
    // A prime vocabulary has no equal chunks: the fewest chunks, the last one narrower.
    const prime = lmHeadChunk(gpu, { ...config, vocabSize: 151939 }, rows);
    assertEquals(prime, Math.ceil(151939 / Math.ceil(151939 / 32768)));
  });
});

Deno.test("shapedMicroBatches: micro-batches as even as the row limit allows, so few filler rows", () => {
  const rows = Array.from({ length: 30 }, (_, i) => new Array(5 + (i % 7)).fill(1));
  const shaped = shapedMicroBatches({ inputIds: rows, attentionMask: rows }, {
    micro: 16,
    padId: 0,
  });
  assertEquals(shaped.map((m) => m.batch.inputIds.length), [15, 15]);
  assertEquals(shaped.flatMap((m) => m.rows).sort((a, b) => a - b), rows.map((_, i) => i));
});

Deno.test("the default tile weighs its cold compile against few runs, speed alone against many", async () => {
  await withoutTileCache(() =>
    withDevice("webgpu", {}, (gpu) => {
      const area = (t: { tm: number; tn: number }) => t.tm * t.tn;
      const cube = { m: 1024, k: 1024, n: 1024 };
      if (!isLavapipe(gpu.name)) {
        // Nothing is measured off lavapipe: 4×4 blocks, whatever the runs.
        assertEquals(defaultMatmulTile(gpu, cube, 1), { tm: 4, tn: 4 });
        return Promise.resolve();
      }
      // Run once, 1024³ is worth no tile that takes seconds to compile (32×32: ~23 s cold).
      assert(area(defaultMatmulTile(gpu, cube, 1)) <= 64, "one run: a tile that compiles fast");
      assert(area(defaultMatmulSwigluTile(gpu, { m: 336, k: 128, n: 384 }, 8)) <= 32);
      // Attention likewise: an eval's few runs take a block of 1 or 2 queries (8 takes ~2 s).
      const attention = { batch: 16, seqLen: 21, heads: 4, kvHeads: 2, headDim: 32 };
      assert(defaultQueryBlock(gpu, attention, 8) <= 2, "few runs: a small query block");
      assertEquals(defaultQueryBlock(gpu, attention), 8);
      if ((navigator.hardwareConcurrency ?? 1) <= 16) {
        // Run for a training run, the fastest tile (32×32 on a few cores) repays its compile.
        assertEquals(defaultMatmulTile(gpu, cube), { tm: 32, tn: 32 });
        assertEquals(defaultMatmulTile(gpu, cube, 1e6), { tm: 32, tn: 32 });
      }
      return Promise.resolve();
    })
  );
});

Deno.test("eval at vocab 151936 on WebGPU: one LM-head pipeline, fast-compiling tiles, the CPU backend's scores", async () => {
  const config = { ...getPreset("tiny"), vocabSize: 151936 };
  const tensors = [...randomInit(config, { seed: 5 })];
  const ids = (n: number, salt: number) =>
    Array.from({ length: n }, (_, t) => (t * 7919 + salt * 104729) % 151936);
  const batch: TokenBatch = {
    inputIds: [ids(12, 1), ids(9, 2), ids(5, 3)],
    attentionMask: [12, 9, 5].map((n) => new Array(n).fill(1)),
  };
  const shaped = shapedMicroBatches(batch, { micro: 2, padId: 0 });
  assertEquals(shaped.length, 2, "two micro-batches");
  const score = (backend: "webgpu" | "cpu") =>
    withoutTileCache(() =>
      withDevice(backend, {}, async (gpu) => {
        const weights = await uploadWeights(gpu, tensors);
        const fwd = evalForward(gpu, config, weights, shaped);
        const rows = shaped[0].batch.inputIds.length, T = shaped[0].batch.inputIds[0].length;
        const all = fwd.steps(rows, T).filter((s): s is Dispatch => s.op === "dispatch");
        const dispatches = all.filter((s) => s.kernel.startsWith("matmul"));
        const blocks = all.filter((s) => s.kernel === "attention").map((s) => Number(s.consts.QB));
        const scores = new Array<number>(3);
        for (const mb of shaped) {
          const r = await fwd.score(mb.batch);
          mb.rows.forEach((row, i) => scores[row] = r.perSample[i]);
        }
        fwd.destroy();
        return { scores, dispatches, blocks, name: gpu.name };
      })
    );
  const gpu = await score("webgpu");
  const heads = gpu.dispatches.filter((s) => s.label.startsWith("lm_head["));
  assertEquals(heads.length, 8, "151936 = 8 chunks of 18992");
  assertEquals(new Set(heads.map((s) => s.wgsl.code())).size, 1, "the chunks share one pipeline");
  if (isLavapipe(gpu.name)) {
    for (const s of gpu.dispatches) {
      const area = Number(s.consts.TM) * Number(s.consts.TN);
      const body = !s.label.startsWith("lm_head[");
      // Body matmuls of a few hundred kFLOP: 8×4 or smaller (under 0.25 s to compile cold);
      // the head at most 16×16 (~2 s), never 32×16 (~7 s) or 32×32 (~23 s).
      assert(area <= (body ? 32 : 256), `${s.label}: tile ${s.consts.TM}×${s.consts.TN}`);
    }
    // Attention in blocks of 1 or 2 queries (under 0.5 s to compile; 8 takes 2 s).
    assert(gpu.blocks.length > 0 && gpu.blocks.every((qb) => qb <= 2), `blocks ${gpu.blocks}`);
  }
  const cpu = await score("cpu");
  assertClose(gpu.scores, cpu.scores, { atol: 2e-5, rtol: 2e-5 });
});

testBackends(
  "scoredRows: the LM head over the scored rows alone gives the same bytes",
  async (backend) => {
    const ckpt = await openCheckpoint(fixture("qwen3-tiny-tied-f32"));
    try {
      await withDevice(backend, {}, async (gpu) => {
        const weights = await uploadWeights(gpu, checkpointTensors(ckpt));
        const V = ckpt.config.vocabSize;
        const lengths = [11, 4, 8, 2];
        const batch: TokenBatch = {
          inputIds: lengths.map((n, r) => [
            ...Array.from({ length: n }, (_, t) => (t * 31 + r * 17 + 3) % V),
            ...new Array(11 - n).fill(0),
          ]),
          attentionMask: lengths.map((
            n,
          ) => [...new Array(n).fill(1), ...new Array(11 - n).fill(0)]),
        };
        const scored = lengths.reduce((a, n) => a + n - 1, 0);
        const score = async (scoredRows: number) => {
          const fwd = new Qwen3Forward(gpu, ckpt.config, weights, {
            maxBatch: 4,
            maxSeqLen: 11,
            vocabChunk: 40, // several chunks, the last one narrower
            scoredRows,
          });
          const r = await fwd.score(batch);
          fwd.destroy();
          return r;
        };
        const all = await score(0), compact = await score(scored + 3);
        assertEquals(compact.tokens, all.tokens);
        assertEquals(compact.perSample, all.perSample, "the same bytes");
        // Fewer rows than the batch scores is refused, not truncated.
        const refused = await score(scored - 1).then(() => null, (e: Error) => e.message);
        assert(refused?.includes("scored rows"), `refused: ${refused}`);
      });
    } finally {
      ckpt.close();
    }
  },
);
