/**
 * θ's L2 norm on the device: ‖θ‖ = sqrt(Σ_tensors Σ_i θ_i²), for the step diagnostic
 * ‖Δθ‖/‖θ‖ (pipeline/strategy.ts updateRatioExpected), without reading θ back.
 *
 * Per shard, kernels/sum_squares.wgsl writes one f32 partial sum of squares per workgroup of
 * PER·WG elements; one readback brings every partial, which the host adds in float64. bf16
 * storage is widened to the f32 it stands for. On the CPU device the same partials come from
 * esflow.c's esf_sum_squares, each summed in double. {@link sumSquaresReference} is the float64
 * reference.
 *
 * Tests: tests/sum_squares_test.ts (both backends, f32 and bf16, ragged sizes and shards),
 * tests/native_test.ts (the C kernel against the float64 reference).
 *
 * @module
 */
import { alignUp, type Device, type DeviceBuffer } from "./device.ts";
import { type Dispatch, grid1d, launch } from "./program.ts";
import type { DeviceTensor } from "./tensor.ts";

/** Elements each invocation squares (a contiguous run). */
const PER = 64;
/** Invocations per workgroup (a power of two, for the tree in the kernel). */
const WG = 256;

/** Σ x² in float64: the reference the device's partials are checked against. */
export function sumSquaresReference(tensors: readonly ArrayLike<number>[]): number {
  let s = 0;
  for (const t of tensors) for (let i = 0; i < t.length; i++) s += t[i] * t[i];
  return s;
}

/** One shard's partials: where they start in the partials buffer and how many there are. */
interface Region {
  offset: number;
  count: number;
}

/**
 * The L2 norm of a fixed set of device tensors: the steps are built once, and each
 * {@link WeightsNorm.compute} is one run and one readback of the partials (4 bytes per
 * PER·WG = 16384 elements).
 */
export class WeightsNorm {
  /** Where the tensors live. */
  readonly device: Device;
  #partials: DeviceBuffer;
  #steps: Dispatch[];
  #regions: Region[];

  /** `tensors`: θ's device tensors (shared, one copy each). */
  constructor(device: Device, tensors: readonly DeviceTensor[]) {
    this.device = device;
    const align = Math.max(4, device.limits.minStorageBufferOffsetAlignment);
    const shards = tensors.flatMap((t) =>
      t.shards.filter((s) => s.rows > 0).map((s) => {
        const n = s.rows * t.rowSize;
        const invocations = Math.ceil(n / PER);
        const g = grid1d(device, invocations, WG);
        return { t, s, n, invocations, count: g.workgroups[0] * g.workgroups[1] };
      })
    );
    let bytes = 0;
    this.#regions = shards.map(({ count }) => {
      const offset = bytes;
      bytes = alignUp(offset + count * 4, align);
      return { offset, count };
    });
    this.#partials = device.createBuffer("norm.partials", Math.max(16, bytes), "es");
    this.#steps = shards.map(({ t, s, n, invocations }, k) => {
      const bf16 = t.dtype === "bf16";
      const region = this.#regions[k];
      return launch(device, {
        label: `norm ${t.name}`,
        kernel: "sum_squares",
        consts: { N: n, PER, BF16: bf16 },
        buffers: [s.buffer, {
          buffer: this.#partials,
          offset: region.offset,
          size: region.count * 4,
        }],
        invocations,
        workgroupSize: WG,
      });
    });
  }

  /** ‖θ‖ of the tensors as they are once all queued work is done. */
  async compute(): Promise<number> {
    this.device.run(this.#steps, "norm");
    const last = this.#regions.at(-1);
    if (!last) return 0;
    const [out] = await this.device.readMany([{
      buffer: this.#partials,
      bytes: last.offset + last.count * 4,
    }]);
    const partials = new Float32Array(out);
    let sum = 0;
    for (const r of this.#regions) {
      for (let g = 0; g < r.count; g++) sum += partials[r.offset / 4 + g];
    }
    return Math.sqrt(sum);
  }

  /** Frees the partials buffer. */
  destroy(): void {
    this.device.destroyBuffer(this.#partials);
  }
}
