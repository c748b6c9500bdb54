// The two backends against each other: the same engine options and packed batch on WebGPU
// (lavapipe here) and on the native CPU backend give every member's fitness and the held-out R
// within 1e-5 relative, the same rank-shaped coefficients, and θ after two updates within the
// bound the update's arithmetic allows (see thetaTolerance); in full rank (chunks and copy),
// with member batching and the prefix cache, in low rank, and with θ in bf16.
import { assert, assertClose, assertEquals, withDevice } from "./helpers.ts";
import type { Backend } from "../kernels/device.ts";
import { EsEngine, type EsEngineOptions } from "../pipeline/engine.ts";
import { getPreset } from "../model/presets.ts";
import { randomInit } from "../model/weights.ts";
import { packBatches } from "../pipeline/data.ts";
import { stageType } from "../pipeline/spec.ts";
import { memberRecords, noiseCoefficients, rankShape, updateCoefficients } from "../pipeline/es.ts";
import "../pipeline/stages/mod.ts";
import type { FitnessImpl } from "../pipeline/stages/types.ts";
import { fromBf16, toBf16 } from "../kernels/tensor.ts";

const config = { ...getPreset("micro"), numLayers: 2 };
const N = 6, SIGMA = 0.02, ALPHA = 0.05, ITERATIONS = 2;

/** Random byte tokens, rows right-padded by different amounts. */
function batches(seed: number, sizes: number[], T: number) {
  let s = seed;
  const rand = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) % 256;
  return sizes.map((rows) => ({
    inputIds: Array.from({ length: rows }, () => Array.from({ length: T }, rand)),
    attentionMask: Array.from(
      { length: rows },
      (_, r) => Array.from({ length: T }, (_, t) => (t < T - r ? 1 : 0)),
    ),
  }));
}
const TRAIN = packBatches(batches(21, [5, 3], 12));
const HELD_OUT = packBatches(batches(22, [4], 12));

type Variant =
  & Partial<
    Pick<EsEngineOptions, "scratch" | "memberBatch" | "lowRank" | "storage" | "chunkBytes">
  >
  & { frozen?: boolean };

/** What a backend computed: fitness and held-out R per iteration, coefficients, θ at the end. */
interface Trajectory {
  fitness: number[][];
  heldOut: number[][];
  coefficients: Float64Array[];
  weights: Map<string, Float32Array>;
}

/**
 * Two ES iterations on one backend: evaluate (with the held-out set), rank-shape the fitness
 * into coefficients, update. Each backend shapes its own fitness, so the coefficients are part
 * of what is compared.
 */
function trajectory(backend: Backend, v: Variant): Promise<Trajectory> {
  const fitness = stageType("fitness", "log_likelihood")!.impl as FitnessImpl;
  // Small shards so sharding is exercised on both devices the same way.
  return withDevice(backend, { shardBytes: 8192 }, async (device) => {
    const engine = await EsEngine.create(device, {
      config,
      tensors: randomInit(config, { seed: 8 }),
      seed: 8,
      population: N,
      antithetic: true,
      maxSamples: 8,
      microBatch: 5,
      maxLen: 12,
      fitness,
      // frozen: the embedding and layer 0 unperturbed, so the prefix cache feeds the members.
      multipliers: (n) => ({
        sigma: v.frozen && (n.includes("embed") || n.includes("layers.0.")) ? 0 : 1,
        alpha: n.includes("mlp") ? 2 : 1,
      }),
      chunkBytes: 4096,
      ...v,
    });
    if (v.frozen) assertEquals(engine.prefixLayers, 1);
    engine.setHeldOut(HELD_OUT);
    const out: Trajectory = { fitness: [], heldOut: [], coefficients: [], weights: new Map() };
    for (let t = 0; t < ITERATIONS; t++) {
      const r = await engine.evaluate(TRAIN, {
        iteration: t,
        population: memberRecords(N, true, SIGMA),
        heldOut: true,
      });
      const c = updateCoefficients(rankShape(r.fitness), {
        alpha: ALPHA,
        sigma: SIGMA,
        population: N,
      });
      const d = noiseCoefficients(c, true);
      engine.update({ iteration: t, coefficients: d });
      out.fitness.push(r.fitness);
      out.heldOut.push(r.heldOut!);
      out.coefficients.push(d);
    }
    for await (const w of engine.weights()) out.weights.set(w.name, w.data);
    engine.destroy();
    return out;
  });
}

/** A bf16 value's position on the number line: adjacent bf16 values are 1 apart, ±0 are 0. */
function bf16Ordinal(bits: number): number {
  return bits & 0x8000 ? -(bits & 0x7fff) : bits;
}

/**
 * θ after the updates, element by element, against the other backend's.
 *
 * f32: both apply θ += Σ_i d_i·m_α·ε_i with the same d (rank shaping of fitness whose order
 * agrees, asserted) and the same Philox words; only the normals' log, sqrt and cos differ: each
 * side is within 1e-6·max(1,|z|) of the float64 twin (tests/native_test.ts,
 * tests/philox_test.ts), and |z| ≤ 5.8 (Box–Muller's bound). Here Σ_i |d_i|·m_α ≤ 0.06 (rank
 * weights −1, −0.6, …, 1: at most the top three minus the bottom three, 3.6·α/N, and m_α ≤ 2),
 * so one update differs by at most 0.06·2e-6·5.8 ≈ 7e-7 and two by 1.4e-6, plus the f32
 * rounding of each sum (an ulp or two of |θ|: rtol 1e-6 is eight). Low rank's A·Bᵀ/√r (a BLAS sgemm of the factors against the WGSL tiles, g·r4 terms
 * summed in another order) has the same inputs' error in each factor. Hence atol 2e-6; measured:
 * 1.2e-7 in full rank, 6e-8 in low rank.
 *
 * bf16: the same f32 sum, then stochastic rounding to bf16 with the same 16 random bits. Only
 * where the two f32 sums straddle a rounding threshold do the results differ, by one bf16
 * step; that happens with probability about |Δsum| / ulp_bf16 per element — an f32 ulp (where
 * the sums differ at all, a fifth of the elements) over a bf16 ulp, ~2^-16 — so a few elements
 * of the 115k (measured: 3). At most one step apart everywhere, and at most 1 in 1,000 apart.
 */
function assertThetaClose(
  got: Map<string, Float32Array>,
  want: Map<string, Float32Array>,
  bf16: boolean,
): void {
  assertEquals([...got.keys()], [...want.keys()]);
  let differing = 0, total = 0;
  for (const [name, w] of want) {
    const g = got.get(name)!;
    total += w.length;
    if (!bf16) {
      assertClose(g, w, { atol: 2e-6, rtol: 1e-6 });
      continue;
    }
    const gb = toBf16(g), wb = toBf16(w);
    assertEquals(fromBf16(gb), g, `${name}: θ holds bf16 values`);
    for (let i = 0; i < w.length; i++) {
      const steps = Math.abs(bf16Ordinal(gb[i]) - bf16Ordinal(wb[i]));
      assert(steps <= 1, `${name}[${i}]: ${g[i]} and ${w[i]} are ${steps} bf16 steps apart`);
      differing += steps;
    }
  }
  if (bf16) assert(differing * 1000 <= total, `${differing} of ${total} bf16 elements differ`);
}

const VARIANTS: [string, Variant][] = [
  ["full rank, chunks", {}],
  ["full rank, a whole perturbed copy", { scratch: "copy" }],
  ["full rank, 4 members at once and the prefix cache", { memberBatch: 4, frozen: true }],
  ["low rank 3", { lowRank: { rank: 3 } }],
  ["θ in bf16", { storage: "bf16" }],
];

for (const [what, v] of VARIANTS) {
  Deno.test(`webgpu and cpu agree: fitness and held-out R within 1e-5, θ after two updates (${what})`, async () => {
    const gpu = await trajectory("webgpu", v), cpu = await trajectory("cpu", v);
    for (let t = 0; t < ITERATIONS; t++) {
      assertClose(cpu.fitness[t], gpu.fitness[t], { atol: 0, rtol: 1e-5 });
      assertClose(cpu.heldOut[t], gpu.heldOut[t], { atol: 0, rtol: 1e-5 });
      // Members differ by far more than the backends do, so the ranks, hence the coefficients,
      // are the same.
      assertEquals(Array.from(cpu.coefficients[t]), Array.from(gpu.coefficients[t]), `t=${t}`);
      assert(new Set(cpu.fitness[t]).size === N, "members must differ for the ranks to agree");
    }
    assertThetaClose(cpu.weights, gpu.weights, v.storage === "bf16");
  });
}
