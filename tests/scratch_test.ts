// A member's perturbed matrices in row chunks, each formed right before the forward reads it,
// against a whole perturbed copy of θ: the same fitness, for a fraction of the memory; and
// population batching against one member at a time. Each on both backends.
import { memberRecords } from "../pipeline/es.ts";
import {
  assert,
  assertClose,
  assertEquals,
  assertUlps,
  testBackends,
  withDevice,
} from "./helpers.ts";
import { EsEngine } from "../pipeline/engine.ts";
import { getPreset } from "../model/presets.ts";
import { randomInit } from "../model/weights.ts";
import { packBatches } from "../pipeline/data.ts";
import { stageType } from "../pipeline/spec.ts";
import "../pipeline/stages/mod.ts";
import type { FitnessImpl } from "../pipeline/stages/types.ts";

testBackends(
  "chunked member scratch: the fitness of a whole perturbed copy, in a fraction of its bytes",
  async (backend) => {
    const config = { ...getPreset("micro"), numLayers: 2 };
    let s = 5;
    const rand = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) % 256;
    const packed = packBatches([5, 3].map((rows) => ({
      inputIds: Array.from({ length: rows }, () => Array.from({ length: 10 }, rand)),
      attentionMask: Array.from(
        { length: rows },
        (_, r) => Array.from({ length: 10 }, (_, t) => (t < 10 - r ? 1 : 0)),
      ),
    })));
    const fitness = stageType("fitness", "log_likelihood")!.impl as FitnessImpl;
    // Small θ shards and smaller chunks: chunks split shards, and no chunk crosses one.
    const run = (scratch: "chunks" | "copy") =>
      withDevice(backend, { shardBytes: 8192 }, async (gpu) => {
        const engine = await EsEngine.create(gpu, {
          config,
          tensors: randomInit(config, { seed: 3 }),
          seed: 3,
          population: 4,
          antithetic: true,
          maxSamples: 8,
          microBatch: 5,
          maxLen: 10,
          fitness,
          multipliers: (n) => ({ sigma: n.includes("mlp") ? 0.5 : 1, alpha: 1 }),
          scratch,
          chunkBytes: 3000,
        });
        const sharded = [...engine.theta.values()].filter((t) => t.shards.length > 1).length;
        const scratchBytes = gpu.allocations().filter((a) => /~member|member\.chunk/.test(a.label))
          .reduce((a, b) => a + b.bytes, 0);
        const out = [];
        for (let t = 0; t < 2; t++) {
          out.push(
            await engine.evaluate(packed, {
              iteration: t,
              population: memberRecords(engine.options.population, engine.options.antithetic, 0.05),
              heldOut: false,
            }),
          );
          engine.update({ iteration: t, coefficients: [0.3, -0.2] });
        }
        const weights = [];
        for await (const w of engine.weights()) weights.push(w);
        engine.destroy();
        return { fitness: out.flatMap((r) => r.fitness), weights, sharded, scratchBytes };
      });
    const chunks = await run("chunks"), copy = await run("copy");
    assert(chunks.sharded > 0, "the test wants sharded tensors");
    // The LM head's chunks cut the vocabulary's online log-sum-exp differently: not bit for bit,
    // a few f32 ulps of F apart (measured at |F| 5.5–9.7: 1 on lavapipe, 2 on the CPU backend).
    // WebGPU keeps the bound it had (1e-6, about 1 ulp at |F| ≥ 8); the CPU gets 4 ulps.
    if (backend === "webgpu") assertClose(chunks.fitness, copy.fitness, { atol: 1e-6, rtol: 0 });
    else assertUlps(chunks.fitness, copy.fitness, 4);
    // The noise of each element is the same in both modes, so the updates are too.
    assertEquals(chunks.weights.map((w) => w.name), copy.weights.map((w) => w.name));
    chunks.weights.forEach((w, i) => assertEquals(w.data, copy.weights[i].data, w.name));
    assert(
      chunks.scratchBytes * 8 < copy.scratchBytes,
      `chunk scratch ${chunks.scratchBytes} B against the copy's ${copy.scratchBytes} B`,
    );
  },
);

Deno.test("chunk rows: as few chunks as fit, cut evenly, 64-aligned where there is room", async () => {
  const { evenChunkRows } = await import("../pipeline/scratch.ts");
  assertEquals(evenChunkRows(384, 201), 192); // two chunks of 192, not 201 + 183
  assertEquals(evenChunkRows(128, 400), 128); // one chunk
  assertEquals(evenChunkRows(100, 40), 34); // three chunks; 64 would not fit
  assertEquals(evenChunkRows(151936, 15872), 15232); // ten chunks of 15,232 (a multiple of 64)
  assertEquals(evenChunkRows(7, 0), 1); // at least a row
  for (const [rows, most] of [[384, 201], [100, 40], [151936, 15872], [5, 2], [1000, 999]]) {
    const per = evenChunkRows(rows, most);
    assert(per <= Math.max(1, most) && per >= 1, `${rows}/${most}: ${per}`);
    assertEquals(Math.ceil(rows / per), Math.ceil(rows / Math.max(1, Math.min(rows, most))));
  }
});

testBackends(
  "population batching: members in one set of dispatches score and update as one at a time (full rank, bf16, prefix cache, a worker's range, low rank)",
  async (backend) => {
    const config = { ...getPreset("micro"), numLayers: 2 };
    let s = 11;
    const rand = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) % 256;
    const packed = packBatches([4, 3].map((rows) => ({
      inputIds: Array.from({ length: rows }, () => Array.from({ length: 9 }, rand)),
      attentionMask: Array.from(
        { length: rows },
        (_, r) => Array.from({ length: 9 }, (_, t) => (t < 9 - r ? 1 : 0)),
      ),
    })));
    const fitness = stageType("fitness", "log_likelihood")!.impl as FitnessImpl;
    const run = (
      memberBatch: number,
      o: {
        storage?: "f32" | "bf16";
        frozen?: boolean;
        members?: { start: number; end: number };
        lowRank?: boolean;
      },
    ) =>
      withDevice(backend, { shardBytes: 8192 }, async (gpu) => {
        const engine = await EsEngine.create(gpu, {
          config,
          tensors: randomInit(config, { seed: 6 }),
          seed: 6,
          population: 6,
          antithetic: false,
          maxSamples: 7,
          microBatch: 4,
          maxLen: 9,
          fitness,
          // frozen: the embedding and layer 0 unperturbed, so the prefix cache feeds the group.
          multipliers: (n) => ({
            sigma: o.frozen && (n.includes("embed") || n.includes("layers.0.")) ? 0 : 1,
            alpha: 1,
          }),
          memberBatch,
          storage: o.storage,
          chunkBytes: 4096,
          lowRank: o.lowRank ? { rank: 2 } : undefined,
        });
        assertEquals(engine.memberBatch, memberBatch);
        const out = [];
        for (let t = 0; t < 2; t++) {
          const r = await engine.evaluate(packed, {
            iteration: t,
            population: memberRecords(engine.options.population, engine.options.antithetic, 0.05),
            heldOut: false,
            members: o.members,
          });
          out.push(...r.fitness);
          engine.update({ iteration: t, coefficients: [0.3, -0.2, 0.1, 0, 0.05, -0.1] });
        }
        const weights = [];
        for await (const w of engine.weights()) weights.push(w);
        engine.destroy();
        return { fitness: out, weights };
      });
    for (
      const o of [{}, { storage: "bf16" as const }, { frozen: true }, {
        members: { start: 1, end: 6 },
      }, { lowRank: true }]
    ) {
      // 6 members as 4 + 2 (or 5 as 4 + 1) against one at a time. The group's chunks are a
      // quarter the size, so the LM head's log-sum-exp folds in another order: f32 rounding apart.
      const one = await run(1, o), four = await run(4, o);
      assertClose(four.fitness, one.fitness, { atol: 1e-6, rtol: 1e-6 });
      four.weights.forEach((w, i) => assertEquals(w.data, one.weights[i].data, w.name));
    }
  },
);
