/**
 * The ES kernels against float64 references, on both backends: es_update with injected noise
 * against every known answer of es_update.json; es_update and perturb with regenerated noise
 * against the TypeScript twin's noise, on a θ split into shards whose starts are not multiples
 * of four.
 */
import type { Device, DeviceBuffer } from "../kernels/device.ts";
import type { Gpu } from "../kernels/runtime.ts";
import { assert, assertClose, randn, seeded, testBackends, withDevice } from "./helpers.ts";
import type { EsCase } from "./es_test.ts";
import { submitSteps } from "../kernels/program.ts";
import { createTensor, destroyTensor, numel, readTensor } from "../kernels/tensor.ts";
import {
  createShardTable,
  createUpdateParams,
  encodePerturbParams,
  encodeUpdateParams,
  esUpdateSteps,
  paramStride,
  perturbSteps,
} from "../kernels/es_update.ts";
import { gaussianNoise } from "../kernels/philox.ts";
import {
  noiseCoefficients,
  noiseCount,
  noiseMember,
  rankShape,
  shapeFitness,
  updateCoefficients,
} from "../pipeline/es.ts";

const CASES = (JSON.parse(
  Deno.readTextFileSync(new URL("./fixtures/es_update.json", import.meta.url)),
) as { cases: EsCase[] }).cases;

function upload(gpu: Device, data: Uint32Array | Float32Array, label: string): DeviceBuffer {
  const b = gpu.createBuffer(label, data.byteLength, "activations");
  gpu.write(b, data);
  return b;
}

// 16-byte shards hold 4 of the 5 elements: the second shard starts at element 4.
testBackends(
  "es_update with injected noise matches every es_update.json case",
  (backend) =>
    withDevice(backend, { shardBytes: 16 }, async (gpu) => {
      for (const c of CASES) {
        const { theta, eps, r, antithetic } = c.input;
        const w = shapeFitness(r, c.input.shaping);
        const d = noiseCoefficients(updateCoefficients(w, c.input), antithetic);
        const t = createTensor(gpu, "theta", [theta.length], { data: new Float32Array(theta) });
        assert(t.shards.length === 2, "the fixture θ is split in two shards");
        const coeffs = upload(
          gpu,
          encodeUpdateParams({ seed: 1, iteration: 0, coefficients: d }),
          "c",
        );
        const injected = upload(gpu, new Float32Array(eps.flat()), "eps");
        const { steps, table } = esUpdateSteps(gpu, {
          theta: t,
          coeffs,
          tensorId: 0,
          injectedNoise: injected,
        });
        submitSteps(gpu, steps);
        const out = await readTensor(gpu, t);
        try {
          assertClose(out, c.expected.theta, { rtol: 1e-6, atol: 0 });
        } catch (e) {
          throw new Error(`${c.name}: ${(e as Error).message}`);
        }
        destroyTensor(gpu, t);
        for (const b of [coeffs, injected, table.buffer]) gpu.destroyBuffer(b);
      }
    }),
);

/** θ [37, 13] in shards of 2 rows: 26 elements each, so shard k starts at element 26k. */
const SHAPE = [37, 13];
const SHARD_BYTES = 2 * 13 * 4 + 12;

testBackends(
  "es_update regenerating noise equals the float64 update with the twin's noise",
  (backend) =>
    withDevice(backend, { shardBytes: SHARD_BYTES }, async (gpu) => {
      const n = numel(SHAPE), seed = 2 ** 40 + 12345, iteration = 9, tensorId = 3;
      const multiplier = 0.75;
      const theta0 = randn(seeded(7), n);
      for (const antithetic of [false, true]) {
        const population = 6;
        const r = Array.from(randn(seeded(antithetic ? 2 : 1), population));
        const c = updateCoefficients(rankShape(r), { alpha: 0.4, sigma: 1e-3, population });
        const d = noiseCoefficients(c, antithetic);
        assert(d.length === noiseCount(population, antithetic));

        // Reference: θ + m_g·Σ_j c_j·sign_j·ε_{index_j}, member by member in f64.
        const expected = Float64Array.from(theta0);
        for (let j = 0; j < population; j++) {
          const { index, sign } = noiseMember(j, population, antithetic);
          const eps = gaussianNoise(seed, iteration, index, tensorId, n);
          for (let e = 0; e < n; e++) expected[e] += multiplier * c[j] * sign * eps[e];
        }

        const t = createTensor(gpu, "theta", SHAPE, { data: theta0 });
        assert(t.shards.length === 19 && t.shards[1].rowStart * t.rowSize === 26, "sharded θ");
        const coeffs = createUpdateParams(gpu, d.length);
        gpu.write(coeffs, encodeUpdateParams({ seed, iteration, coefficients: d }));
        const { steps, table } = esUpdateSteps(gpu, { theta: t, coeffs, tensorId, multiplier });
        submitSteps(gpu, steps);
        const out = await readTensor(gpu, t);
        // Compare the update itself, not just θ, so a small error cannot hide behind |θ|.
        const delta = out.map((x, e) => x - theta0[e]);
        const want = expected.map((x, e) => x - theta0[e]);
        assertClose(delta, want, { rtol: 1e-5, atol: 1e-6 });
        assertClose(out, expected, { rtol: 1e-5, atol: 1e-6 });
        destroyTensor(gpu, t);
        gpu.destroyBuffer(coeffs);
        gpu.destroyBuffer(table.buffer);
      }
    }),
);

testBackends(
  "perturb writes θ + s·m·ε for many member slots from one submit",
  (backend) =>
    withDevice(backend, { shardBytes: SHARD_BYTES }, async (gpu) => {
      const n = numel(SHAPE), seed = 77, iteration = 123, tensorId = 11, sigma = 0.01;
      const multiplier = 2;
      const theta0 = randn(seeded(3), n);
      const theta = createTensor(gpu, "theta", SHAPE, { data: theta0 });
      const table = createShardTable(gpu, theta, { tensorId, multiplier });

      // An antithetic population of 4: slots 0..3 are +ε0, +ε1, −ε0, −ε1.
      const population = 4;
      const records = Array.from({ length: population }, (_, j) => {
        const m = noiseMember(j, population, true);
        return { seed, iteration, member: m.index, scale: m.sign * sigma };
      });
      const stride = paramStride(gpu);
      const params = upload(gpu, encodePerturbParams(records, stride), "perturb.params");
      const outs = records.map((_, j) => createTensor(gpu, `theta.member${j}`, SHAPE));
      const steps = outs.flatMap((out, j) =>
        perturbSteps(gpu, { theta, out, params, paramIndex: j, table }).steps
      );
      submitSteps(gpu, steps);

      for (let j = 0; j < population; j++) {
        const got = await readTensor(gpu, outs[j]);
        const eps = gaussianNoise(seed, iteration, records[j].member, tensorId, n);
        const want = theta0.map((x, e) => x + records[j].scale * multiplier * eps[e]);
        assertClose(got, want, { rtol: 1e-6, atol: 1e-7 });
      }
      // θ itself is never touched: perturbation is exact, not add-then-subtract.
      assertClose(await readTensor(gpu, theta), theta0, { atol: 0, rtol: 0 });
      // Antithetic partners are exact mirrors around θ.
      const plus = await readTensor(gpu, outs[0]), minus = await readTensor(gpu, outs[2]);
      assertClose(plus.map((x, e) => x + minus[e] - 2 * theta0[e]), new Float32Array(n), {
        atol: 1e-6,
        rtol: 0,
      });

      // The same steps serve the next iteration: only the params buffer changes.
      const next = records.map((r) => ({ ...r, iteration: iteration + 1 }));
      gpu.write(params, encodePerturbParams(next, stride));
      submitSteps(gpu, steps);
      const got = await readTensor(gpu, outs[1]);
      const eps = gaussianNoise(seed, iteration + 1, next[1].member, tensorId, n);
      assertClose(got, theta0.map((x, e) => x + next[1].scale * multiplier * eps[e]), {
        rtol: 1e-6,
        atol: 1e-7,
      });
      if (backend === "webgpu") {
        const count = (gpu as Gpu).pipelineCount;
        assert(count === 1, "one perturb pipeline for every member and iteration");
      }
    }),
);
