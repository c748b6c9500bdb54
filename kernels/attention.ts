/**
 * Causal GQA attention wrapper and its float64 reference.
 *
 * @module
 */
import type { Gpu } from "./runtime.ts";
import { launch, type Step } from "./program.ts";

/** Shapes of one attention call. */
export interface AttentionShape {
  batch: number;
  seqLen: number;
  heads: number;
  kvHeads: number;
  headDim: number;
}

/** out = softmax(q·kᵀ/√d + causal + key padding)·v per query head, over its kv head. */
export function attentionStep(
  gpu: Gpu,
  o: AttentionShape & {
    label: string;
    q: GPUBuffer;
    k: GPUBuffer;
    v: GPUBuffer;
    mask: GPUBuffer;
    out: GPUBuffer;
  },
): Step {
  if (o.headDim % 4 !== 0) {
    throw new Error(`attention ${o.label}: head_dim ${o.headDim} must be a multiple of 4`);
  }
  if (o.heads % o.kvHeads !== 0) {
    throw new Error(
      `attention ${o.label}: ${o.heads} heads not divisible by ${o.kvHeads} kv heads`,
    );
  }
  return launch(gpu, {
    label: o.label,
    kernel: "attention",
    consts: {
      B: o.batch,
      T: o.seqLen,
      NH: o.heads,
      NKV: o.kvHeads,
      D: o.headDim,
      SCALE: 1 / Math.sqrt(o.headDim),
    },
    buffers: [o.q, o.k, o.v, o.mask, o.out],
    invocations: o.batch * o.heads * o.seqLen,
  });
}

/** Float64 reference of {@link attentionStep}: q (B·T, NH, D), k/v (B·T, NKV, D), mask (B·T). */
export function attentionReference(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  o: AttentionShape & { mask: ArrayLike<number> },
): Float64Array {
  const { batch: B, seqLen: T, heads: NH, kvHeads: NKV, headDim: D } = o;
  const out = new Float64Array(B * T * NH * D);
  const scale = 1 / Math.sqrt(D);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < NH; h++) {
      const g = Math.floor(h / (NH / NKV));
      for (let t = 0; t < T; t++) {
        const qo = ((b * T + t) * NH + h) * D;
        const scores: number[] = [];
        const keys: number[] = [];
        for (let s = 0; s <= t; s++) {
          if (!o.mask[b * T + s]) continue;
          const ko = ((b * T + s) * NKV + g) * D;
          let dot = 0;
          for (let j = 0; j < D; j++) dot += q[qo + j] * k[ko + j];
          scores.push(dot * scale);
          keys.push(ko);
        }
        if (scores.length === 0) continue;
        const mx = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - mx));
        const z = e.reduce((a, b) => a + b, 0);
        for (let n = 0; n < keys.length; n++) {
          for (let j = 0; j < D; j++) out[qo + j] += (e[n] / z) * v[keys[n] + j];
        }
      }
    }
  }
  return out;
}
