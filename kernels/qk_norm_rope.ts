/**
 * Fused per-head RMSNorm + RoPE wrapper, and the RoPE tables computed as HF computes them. The
 * kernel's text also serves the KV-cache decode's variant (kernels/kv_cache.ts
 * qkNormRopeAtStep), which differs only in where each row's position comes from.
 *
 * Tests: tests/kernels_test.ts, tests/kv_cache_test.ts, tests/native_test.ts (CPU).
 *
 * @module
 */
import type { Device, DeviceBuffer } from "./device.ts";
import { fillMarkers, launch, type Step, wgslSource } from "./program.ts";

let template: string | null = null;

/**
 * kernels/qk_norm_rope.wgsl with its row position written in: `sequence`, r % T of whole
 * sequences; `buffer`, pos[r / TN] + r % TN from binding 4, clamped to the tables' P rows.
 */
export function qkNormRopeSource(positions: "sequence" | "buffer"): string {
  template ??= wgslSource(new URL("./qk_norm_rope.wgsl", import.meta.url));
  return fillMarkers(
    "qk_norm_rope.wgsl",
    template,
    positions === "sequence" ? { "pos-binding": [], position: ["let p = row % T;"] } : {
      "pos-binding": ["@group(0) @binding(4) var<storage, read> pos: array<u32>;"],
      position: ["let p = min(pos[row / TN] + row % TN, P - 1u);"],
    },
  );
}

/** Normalises each head of x (rows, heads, headDim) with w (headDim), then rotates it in place. */
export function qkNormRopeStep(
  device: Device,
  o: {
    label: string;
    x: DeviceBuffer;
    w: DeviceBuffer;
    cos: DeviceBuffer;
    sin: DeviceBuffer;
    rows: number;
    seqLen: number;
    heads: number;
    headDim: number;
    eps: number;
    /** Population batching: token rows per member, and elements between members' w (0: shared). */
    members?: { rows: number; wStride: number };
  },
): Step {
  if (o.headDim % 2 !== 0) throw new Error(`rope ${o.label}: head_dim ${o.headDim} must be even`);
  return launch(device, {
    label: o.label,
    kernel: "qk_norm_rope",
    source: () => qkNormRopeSource("sequence"),
    consts: {
      R: o.rows,
      T: o.seqLen,
      NH: o.heads,
      D: o.headDim,
      EPS: o.eps,
      RM: o.members?.rows ?? o.rows,
      W_MS: o.members?.wStride ?? 0,
    },
    buffers: [o.x, o.w, o.cos, o.sin],
    invocations: o.rows * o.heads,
  });
}

/**
 * RoPE tables (seqLen, headDim/2) as HF Qwen3RotaryEmbedding rounds them: inv_freq in f32 as
 * 1/θ^(2i/d), the angle pos·inv_freq rounded to f32, then cos and sin of that f32 angle.
 * Computing them here in f64 and rounding once avoids WGSL's loose cos/sin at large angles.
 */
export function ropeTables(
  o: { seqLen: number; headDim: number; theta: number },
): { cos: Float32Array; sin: Float32Array } {
  const half = o.headDim / 2;
  const f = Math.fround;
  const invFreq = new Float64Array(half);
  for (let i = 0; i < half; i++) {
    invFreq[i] = f(1 / f(Math.pow(o.theta, f(f(2 * i) / o.headDim))));
  }
  const cos = new Float32Array(o.seqLen * half);
  const sin = new Float32Array(o.seqLen * half);
  for (let p = 0; p < o.seqLen; p++) {
    for (let i = 0; i < half; i++) {
      const angle = f(p * invFreq[i]);
      cos[p * half + i] = Math.cos(angle);
      sin[p * half + i] = Math.sin(angle);
    }
  }
  return { cos, sin };
}
