// θ's L2 norm on the device (kernels/sum_squares.ts): on both backends, f32 and bf16 storage,
// against the float64 reference on fresh random tensors of ragged sizes (not multiples of the
// 64 elements of an invocation or the 16384 of a workgroup), some split into several shards.
import { assertClose, randn, seeded, testBackends, withDevice } from "./helpers.ts";
import { createTensor, fromBf16, toBf16, writeTensor } from "../kernels/tensor.ts";
import { sumSquaresReference, WeightsNorm } from "../kernels/sum_squares.ts";

const SHAPES = [[2], [6], [37, 12], [514, 65], [40000]];

for (const dtype of ["f32", "bf16"] as const) {
  testBackends(`‖θ‖ on the device equals the float64 reference (${dtype})`, (backend) =>
    // 64 KiB shards: the [514, 65] and [40000] tensors span several.
    withDevice(backend, { shardBytes: 1 << 16 }, async (device) => {
      const rng = seeded(dtype === "f32" ? 7 : 8);
      const data = SHAPES.map((s) => randn(rng, s.reduce((a, b) => a * b, 1), 0.5));
      const tensors = SHAPES.map((shape, i) => {
        const t = createTensor(device, `t${i}`, shape, { dtype });
        writeTensor(device, t, data[i]);
        return t;
      });
      const stored = dtype === "bf16" ? data.map((d) => fromBf16(toBf16(d))) : data;
      const norm = new WeightsNorm(device, tensors);
      const got = await norm.compute();
      assertClose([got], [Math.sqrt(sumSquaresReference(stored))], { rtol: 1e-6, atol: 0 });
      // A second compute reads the same partials again: no state carries over.
      assertClose([await norm.compute()], [got], { rtol: 0, atol: 0 });
      norm.destroy();
    }));
}
