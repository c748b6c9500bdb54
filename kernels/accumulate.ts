/**
 * Fitness accumulation wrapper: totals[slot] += Σ_b r[b], the slot read from the member's
 * perturb record (kernels/records.ts PERTURB).
 *
 * Tests: tests/train_test.ts (the engine's totals against the float64 reference), tests/native_test.ts (CPU).
 *
 * @module
 */
import type { Device, DeviceBuffer } from "./device.ts";
import { kernelSource, launch, type Step } from "./program.ts";
import { PERTURB, wgslOffsets } from "./records.ts";

/** Bytes between slots of a totals buffer: a valid storage binding offset on this adapter. */
export function slotStride(device: Device): number {
  return Math.max(4, device.limits.minStorageBufferOffsetAlignment);
}

/**
 * totals[slot] += Σ_{b < batch} r[offset + b], with `totals` laid out at {@link slotStride} and
 * the slot word 5 of record `member` of `params` (records `paramStride` bytes apart).
 */
export function accumulateStep(
  device: Device,
  o: {
    label: string;
    r: DeviceBuffer;
    batch: number;
    totals: DeviceBuffer;
    params: DeviceBuffer;
    paramStride: number;
    /** Which record of `params` (the member's place in its group). Default 0. */
    member?: number;
    /** First sample of r to add (a member's block in a batch of members). Default 0. */
    offset?: number;
  },
): Step {
  return launch(device, {
    label: o.label,
    kernel: "accumulate",
    consts: {
      B: o.batch,
      R_OFF: o.offset ?? 0,
      MEMBER: o.member ?? 0,
      PARAM_WORDS: o.paramStride / 4,
      SLOT_WORDS: slotStride(device) / 4,
    },
    source: () => wgslOffsets(PERTURB) + kernelSource("accumulate"),
    buffers: [o.r, o.totals, o.params],
    invocations: 1,
    workgroupSize: 1,
    stage: "fitness",
    role: "accumulate",
  });
}
