/**
 * Weights checksum: a 64-bit digest of θ's f32 bit patterns, computed on the GPU so a process
 * can compare its weights with another's every iteration without reading θ back.
 *
 * Per tensor, kernels/checksum.wgsl sums two independent hashes of (element index, bits) with
 * wrapping u32 adds (order-free, so deterministic on any adapter); the CPU folds the per-tensor
 * pairs, in name order, into 16 hex digits. {@link checksumReference} is the TypeScript twin.
 *
 * Tests: tests/distributed_test.ts, tests/native_test.ts (CPU against checksumReference).
 *
 * @module
 */
import type { Device, DeviceBuffer } from "./device.ts";
import type { DeviceTensor } from "./tensor.ts";
import { launch, type Step } from "./program.ts";
import { slotStride } from "./accumulate.ts";

/** Elements each invocation hashes (a contiguous run). */
const PER = 64;

/** The murmur3 finalizer, as in checksum.wgsl. */
function fmix(v: number): number {
  let h = v >>> 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b) >>> 0;
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35) >>> 0;
  h ^= h >>> 16;
  return h >>> 0;
}

/** The two per-tensor sums of checksum.wgsl, on the CPU. */
export function tensorSums(data: Float32Array): [number, number] {
  const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
  let a = 0, b = 0;
  for (let g = 0; g < bits.length; g++) {
    a = (a + fmix(bits[g] ^ Math.imul(g, 0x9e3779b9))) >>> 0;
    b = (b + fmix(((bits[g] + 0x7f4a7c15) >>> 0) ^ fmix((g + 0x165667b1) >>> 0))) >>> 0;
  }
  return [a, b];
}

/** Folds per-tensor sums, in order, into the 16-hex-digit digest. */
export function foldSums(sums: readonly (readonly [number, number])[]): string {
  let h1 = 0x811c9dc5, h2 = 0x01000193;
  sums.forEach(([a, b], i) => {
    h1 = fmix(((h1 ^ a) + Math.imul(i + 1, 0x9e3779b9)) >>> 0);
    h2 = fmix(((h2 + b) >>> 0) ^ h1);
  });
  const hex = (v: number) => v.toString(16).padStart(8, "0");
  return hex(h1) + hex(h2);
}

/** The digest of weights held on the CPU (tests; the same value {@link WeightsChecksum} gives). */
export function checksumReference(tensors: readonly Float32Array[]): string {
  return foldSums(tensors.map(tensorSums));
}

/**
 * Checksums a fixed set of device tensors: the steps are built once, and each
 * {@link WeightsChecksum.compute} is one submit and one small readback (8 bytes per tensor).
 */
export class WeightsChecksum {
  readonly device: Device;
  #sums: DeviceBuffer;
  #steps: Step[];
  #count: number;

  /** `tensors` in the order the digest folds them (HF order, as the engine keeps them). */
  constructor(device: Device, tensors: readonly DeviceTensor[]) {
    this.device = device;
    this.#count = tensors.length;
    const stride = slotStride(device);
    this.#sums = device.createBuffer("checksum.sums", Math.max(1, tensors.length) * stride, "es");
    this.#steps = tensors.flatMap((t, slot) =>
      t.shards.filter((s) => s.rows > 0).map((s) => {
        // u32 words: one f32, or a pair of bf16 (a bf16 shard holds an even element count).
        const perWord = t.dtype === "bf16" ? 2 : 1;
        const n = (s.rows * t.rowSize) / perWord;
        return launch(device, {
          label: `checksum ${t.name}`,
          kernel: "checksum",
          consts: { N: n, BASE: (s.rowStart * t.rowSize) / perWord, PER },
          buffers: [s.buffer, { buffer: this.#sums, offset: slot * stride, size: 8 }],
          invocations: Math.ceil(n / PER),
        });
      })
    );
  }

  /** The digest of the tensors as they are once all queued work is done. */
  async compute(): Promise<string> {
    this.device.run(
      [{ op: "clear", label: "checksum.sums", buffer: this.#sums }, ...this.#steps],
      "checksum",
    );
    const stride = slotStride(this.device);
    const out = await this.device.readMany(
      Array.from({ length: this.#count }, (_, i) => ({
        buffer: this.#sums,
        offset: i * stride,
        bytes: 8,
      })),
    );
    return foldSums(out.map((b) => {
      const v = new Uint32Array(b);
      return [v[0], v[1]] as const;
    }));
  }

  /** Frees the sums buffer. */
  destroy(): void {
    this.device.destroyBuffer(this.#sums);
  }
}
