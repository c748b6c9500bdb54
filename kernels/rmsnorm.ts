/**
 * RMSNorm kernel wrapper: HF Qwen3RMSNorm in f32.
 *
 * Tests: tests/kernels_test.ts (against rmsnormReference), tests/native_test.ts (CPU).
 *
 * @module
 */
import type { Device, DeviceBuffer } from "./device.ts";
import { launch, type Step } from "./program.ts";

/** y = w · x · rsqrt(mean(x²) + eps) for each of `rows` rows of width `dim`. x is (rows, dim). */
export function rmsnormStep(
  device: Device,
  o: {
    label: string;
    x: DeviceBuffer;
    w: DeviceBuffer;
    y: DeviceBuffer;
    rows: number;
    dim: number;
    eps: number;
    /** Population batching: rows per member, and elements between members' w (0: shared). */
    members?: { rows: number; wStride: number };
  },
): Step {
  if (o.dim % 4 !== 0) {
    throw new Error(`rmsnorm ${o.label}: width ${o.dim} must be a multiple of 4`);
  }
  return launch(device, {
    label: o.label,
    kernel: "rmsnorm",
    consts: {
      R: o.rows,
      D: o.dim,
      EPS: o.eps,
      RM: o.members?.rows ?? o.rows,
      W_MS4: memberStride4(o.label, o.members?.wStride ?? 0),
    },
    buffers: [o.x, o.w, o.y],
    invocations: o.rows,
  });
}

/** Float64 reference of {@link rmsnormStep}. */
export function rmsnormReference(
  x: Float32Array,
  w: Float32Array,
  o: { rows: number; dim: number; eps: number },
): Float64Array {
  const y = new Float64Array(o.rows * o.dim);
  for (let r = 0; r < o.rows; r++) {
    let ss = 0;
    for (let i = 0; i < o.dim; i++) ss += x[r * o.dim + i] ** 2;
    const inv = 1 / Math.sqrt(ss / o.dim + o.eps);
    for (let i = 0; i < o.dim; i++) y[r * o.dim + i] = w[i] * x[r * o.dim + i] * inv;
  }
  return y;
}

/** A member stride in vec4s; it must be a multiple of 4 elements. */
function memberStride4(label: string, stride: number): number {
  if (stride % 4 !== 0) {
    throw new Error(`rmsnorm ${label}: member stride ${stride} is not a multiple of 4`);
  }
  return stride / 4;
}
