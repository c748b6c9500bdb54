/**
 * SwiGLU wrapper: gate ← silu(gate)·up over (rows, width).
 *
 * Tests: tests/kernels_test.ts, tests/native_test.ts (CPU).
 *
 * @module
 */
import type { Device, DeviceBuffer } from "./device.ts";
import { launch, type Step } from "./program.ts";

/** gate ← silu(gate) · up, elementwise over rows·width values (width a multiple of 4). */
export function swigluStep(
  device: Device,
  o: { label: string; gate: DeviceBuffer; up: DeviceBuffer; rows: number; width: number },
): Step {
  if (o.width % 4 !== 0) {
    throw new Error(`swiglu ${o.label}: width ${o.width} must be a multiple of 4`);
  }
  const n4 = (o.rows * o.width) / 4;
  return launch(device, {
    label: o.label,
    kernel: "swiglu",
    consts: { N4: n4 },
    buffers: [o.gate, o.up],
    invocations: n4,
  });
}

/** Float64 reference of {@link swigluStep}. */
export function swigluReference(gate: Float32Array, up: Float32Array): Float64Array {
  return Float64Array.from(gate, (g, i) => (g / (1 + Math.exp(-g))) * up[i]);
}
