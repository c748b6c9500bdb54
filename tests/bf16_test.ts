/**
 * bf16 storage of θ: the conversions, the perturb kernel widening bf16 to f32, and the update's
 * stochastic rounding, whose mean keeps steps far below a bf16 ulp; the kernels on both backends.
 */
import type { Device, DeviceBuffer } from "../kernels/device.ts";
import {
  assert,
  assertClose,
  assertEquals,
  randn,
  seeded,
  testBackends,
  withDevice,
} from "./helpers.ts";
import { submitSteps } from "../kernels/program.ts";
import { createTensor, fromBf16, readTensor, toBf16 } from "../kernels/tensor.ts";
import {
  chunkPerturbSteps,
  encodePerturbParams,
  encodeUpdateParams,
  esUpdateSteps,
  paramStride,
  perturbSteps,
} from "../kernels/es_update.ts";
import { gaussianNoise } from "../kernels/philox.ts";

function upload(gpu: Device, data: Uint32Array | Float32Array, label: string): DeviceBuffer {
  const b = gpu.createBuffer(label, data.byteLength, "activations");
  gpu.write(b, data);
  return b;
}

Deno.test("bf16: round to nearest even, and back exactly", () => {
  const v = new Float32Array([1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5, 0, -0, Infinity, NaN, 3e38]);
  const back = fromBf16(toBf16(v));
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa, 1.
  assertEquals(Array.from(back.slice(0, 4)), [1, 1, 1 + 2 ** -6, -2.5]);
  assert(Object.is(back[4], 0) && Object.is(back[5], -0), "signed zeros");
  assertEquals(back[6], Infinity);
  assert(Number.isNaN(back[7]), "NaN stays NaN");
  assert(Number.isFinite(back[8]), "3e38 rounds to a finite bf16");
  const r = randn(seeded(1), 1000, 0.02);
  const once = fromBf16(toBf16(r));
  assertEquals(fromBf16(toBf16(once)), once);
  for (let i = 0; i < r.length; i++) {
    assert(Math.abs(once[i] - r[i]) <= Math.abs(r[i]) * 2 ** -8, `element ${i}`);
  }
});

// Small shards: a vector of odd-row shards and a matrix cut in shards and chunks.
testBackends(
  "bf16: θ stored in half the bytes, perturbed into f32 whole and in chunks",
  (backend) =>
    withDevice(backend, { shardBytes: 64 }, async (gpu) => {
      const data = randn(seeded(2), 30 * 6, 0.05);
      const t = createTensor(gpu, "w", [30, 6], { data, dtype: "bf16" });
      assert(t.shards.length > 1, "sharded");
      // Two bytes an element, up to 16 bytes of alignment per buffer.
      for (const s of t.shards) {
        assert(
          s.buffer.size - s.rows * 6 * 2 < 16,
          `a shard of ${s.rows} rows: ${s.buffer.size} B`,
        );
      }
      const stored = fromBf16(toBf16(data));
      assertEquals(await readTensor(gpu, t), stored);
      const v = createTensor(gpu, "v", [10], { data: data.subarray(0, 10), dtype: "bf16" });
      assert(v.shards.every((s) => s.rows % 2 === 0), "a bf16 vector's shards hold pairs");
      assertEquals(await readTensor(gpu, v), fromBf16(toBf16(data.subarray(0, 10))));

      const params = upload(
        gpu,
        encodePerturbParams([{ seed: 5, iteration: 3, member: 2, scale: -0.01 }], paramStride(gpu)),
        "params",
      );
      const eps = gaussianNoise(5, 3, 2, 7, data.length);
      const want = Float64Array.from(stored, (x, e) => x + -0.01 * 0.5 * eps[e]);
      // Whole: into an f32 copy sharded like θ.
      const out = createTensor(gpu, "out", [30, 6]);
      const whole = perturbSteps(gpu, {
        theta: t,
        out,
        params,
        paramIndex: 0,
        tensorId: 7,
        multiplier: 0.5,
      });
      await submitSteps(gpu, whole.steps);
      assertClose(await readTensor(gpu, out), want, { atol: 1e-6, rtol: 0 });
      // Chunks of 4 rows, each read back from the one chunk buffer after its step.
      const buffer = gpu.createBuffer("chunk", 4 * 6 * 4, "activations");
      const { chunks } = chunkPerturbSteps(gpu, {
        theta: t,
        tensorId: 7,
        multiplier: 0.5,
        chunkRows: 4,
        out: buffer,
        params,
        paramIndex: 0,
      });
      const got = new Float32Array(data.length);
      for (const c of chunks) {
        await submitSteps(gpu, [c.step]);
        const part = await gpu.readF32(buffer, c.rows * 6);
        got.set(part, c.rowStart * 6);
      }
      assertClose(got, want, { atol: 1e-6, rtol: 0 });
    }),
);

testBackends(
  "bf16: the update rounds stochastically, so steps of 1/80 ulp add up on average",
  (backend) =>
    withDevice(backend, {}, async (gpu) => {
      const n = 4096, step = 1e-4, iterations = 100;
      // At 1.0 a bf16 ulp is 2^-7 ≈ 0.0078: round-to-nearest would drop every step of 1e-4.
      const t = createTensor(gpu, "theta", [n], {
        data: new Float32Array(n).fill(1),
        dtype: "bf16",
      });
      const injected = upload(gpu, new Float32Array(n).fill(1), "eps");
      const coeffs = gpu.createBuffer("coeffs", 16 + 4, "activations");
      const { steps } = esUpdateSteps(gpu, {
        theta: t,
        coeffs,
        tensorId: 0,
        injectedNoise: injected,
      });
      for (let it = 0; it < iterations; it++) {
        gpu.write(coeffs, encodeUpdateParams({ seed: 9, iteration: it, coefficients: [step] }));
        await submitSteps(gpu, steps);
      }
      const got = await readTensor(gpu, t);
      const mean = got.reduce((a, b) => a + b, 0) / n;
      // Each element gains 0.01 in expectation; the mean of 4096 has a standard error of ~1.4e-4.
      assertClose([mean], [1 + step * iterations], { atol: 1e-3, rtol: 0 });
      assert(new Set(got).size > 1, "elements rounded differently");
      assertEquals(fromBf16(toBf16(got)), got);
      // A zero step leaves bf16 values exactly as they were.
      gpu.write(coeffs, encodeUpdateParams({ seed: 9, iteration: 100, coefficients: [0] }));
      await submitSteps(gpu, steps);
      assertEquals(await readTensor(gpu, t), got);
    }),
);
