/**
 * Fitness accumulation wrapper: total[slot] += Σ_b r[b].
 *
 * @module
 */
import type { Gpu } from "./runtime.ts";
import { launch, type Step } from "./program.ts";

/** Bytes between slots of a totals buffer: a valid storage binding offset on this adapter. */
export function slotStride(gpu: Gpu): number {
  return Math.max(4, gpu.limits.minStorageBufferOffsetAlignment);
}

/** total[slot] += Σ_{b < batch} r[b], with `totals` laid out at {@link slotStride}. */
export function accumulateStep(
  gpu: Gpu,
  o: {
    label: string;
    r: GPUBuffer;
    batch: number;
    totals: GPUBuffer;
    slot: number;
    /** First sample of r to add (a member's block in a batch of members). Default 0. */
    offset?: number;
  },
): Step {
  return launch(gpu, {
    label: o.label,
    kernel: "accumulate",
    consts: { B: o.batch, R_OFF: o.offset ?? 0 },
    buffers: [o.r, { buffer: o.totals, offset: o.slot * slotStride(gpu), size: 4 }],
    invocations: 1,
    workgroupSize: 1,
  });
}
