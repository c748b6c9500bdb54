/**
 * The decode kernels of autoregressive generation with a KV cache (model/decode.ts): q/k norm and
 * RoPE at positions held in a buffer, the cache write, and the attention of new queries over the
 * cache, each with its float64 reference.
 *
 * Legend: S = sequences (members·B), TN = new tokens per sequence in this step (the prompt chunk
 * of a prefill, 1 in a decode step), R = S·TN rows, SLOTS = cache slots per sequence, NH = query
 * heads, NKV = kv heads, D = head_dim, P = rows of the RoPE tables.
 *
 * Every position lives in `pos` (S u32, the position of each sequence's first new token),
 * written by the host before each step: the kernels' constants are the same at every step, so a
 * generation compiles one set of pipelines for its prefill and one for its decode steps (on
 * lavapipe every distinct constant is a new pipeline to compile). Row r of a step is token
 * r % TN of sequence r / TN, at position pos[r / TN] + r % TN, which is also its cache slot.
 *
 * Tests: tests/kv_cache_test.ts (each kernel against its reference on both backends, ragged
 * shapes, GQA and MQA, positions past the cache), tests/decode_test.ts (the whole decode).
 *
 * @module
 */
import type { Device, DeviceBuffer } from "./device.ts";
import { fillMarkers, launch, type Step, wgslSource } from "./program.ts";
import { qkNormRopeSource } from "./qk_norm_rope.ts";

/** The rows of one decode step: sequences and new tokens per sequence. */
export interface StepRows {
  /** S: sequences (members·B). */
  sequences: number;
  /** TN: new tokens per sequence in this step. */
  newTokens: number;
}

/**
 * Normalises each head of x (R, NH, D) with w (D) and rotates it in place by RoPE at position
 * pos[r / TN] + r % TN (clamped to the tables' last row).
 */
export function qkNormRopeAtStep(
  device: Device,
  o: StepRows & {
    label: string;
    x: DeviceBuffer;
    w: DeviceBuffer;
    cos: DeviceBuffer;
    sin: DeviceBuffer;
    pos: DeviceBuffer;
    heads: number;
    headDim: number;
    /** P: rows of the RoPE tables. */
    positions: number;
    eps: number;
    /** Population batching: rows per member, and elements between members' w (0: shared). */
    members?: { rows: number; wStride: number };
  },
): Step {
  if (o.headDim % 2 !== 0) throw new Error(`rope ${o.label}: head_dim ${o.headDim} must be even`);
  const rows = o.sequences * o.newTokens;
  return launch(device, {
    label: o.label,
    kernel: "qk_norm_rope_at",
    source: () => qkNormRopeSource("buffer"),
    consts: {
      R: rows,
      TN: o.newTokens,
      NH: o.heads,
      D: o.headDim,
      P: o.positions,
      EPS: o.eps,
      RM: o.members?.rows ?? Math.max(rows, 1),
      W_MS: o.members?.wStride ?? 0,
    },
    buffers: [o.x, o.w, o.cos, o.sin, o.pos],
    invocations: rows * o.heads,
  });
}

/** Writes each new row of k and v (R, NKV·D) into slot pos[r / TN] + r % TN of its sequence. */
export function kvCacheWriteStep(
  device: Device,
  o: StepRows & {
    label: string;
    k: DeviceBuffer;
    v: DeviceBuffer;
    pos: DeviceBuffer;
    kCache: DeviceBuffer;
    vCache: DeviceBuffer;
    slots: number;
    kvHeads: number;
    headDim: number;
  },
): Step {
  const width = o.kvHeads * o.headDim;
  if (width % 4 !== 0) {
    throw new Error(`kv cache ${o.label}: NKV·D = ${width} must be a multiple of 4`);
  }
  const rows = o.sequences * o.newTokens;
  return launch(device, {
    label: o.label,
    kernel: "kv_cache_write",
    consts: { R: rows, TN: o.newTokens, SLOTS: o.slots, E4: width / 4 },
    buffers: [o.k, o.v, o.pos, o.kCache, o.vCache],
    invocations: rows * (width / 4),
  });
}

let template: string | null = null;

/** The kernel for one head_dim: the .wgsl with its //@ markers written out as named registers. */
function attentionCacheSource(headDim: number): string {
  template ??= wgslSource(new URL("./attention_cache.wgsl", import.meta.url));
  const r = [...Array(headDim / 4).keys()];
  const parts: Record<string, string[]> = {
    "q-load": r.flatMap((j) => [
      `let q${j} = q[qb + ${j}u] * SCALE;`,
      `var a${j} = vec4f(0.0);`,
    ]),
    score: [
      `var d = q0 * kc[kBase];`,
      ...r.slice(1).map((j) => `d += q${j} * kc[kBase + ${j}u];`),
    ],
    rescale: r.map((j) => `a${j} *= c;`),
    accumulate: r.map((j) => `a${j} += p * vc[kBase + ${j}u];`),
    store: r.map((j) => `out[qb + ${j}u] = a${j} * inv;`),
  };
  return fillMarkers("attention_cache.wgsl", template, parts);
}

/**
 * out = softmax(q·kᵀ/√d)·v per query head over its sequence's cache slots 0..p, p the query's
 * position (GQA: head h reads kv head h / (NH / NKV)).
 */
export function attentionCacheStep(
  device: Device,
  o: StepRows & {
    label: string;
    q: DeviceBuffer;
    kCache: DeviceBuffer;
    vCache: DeviceBuffer;
    pos: DeviceBuffer;
    out: DeviceBuffer;
    slots: number;
    heads: number;
    kvHeads: number;
    headDim: number;
  },
): Step {
  if (o.headDim % 4 !== 0) {
    throw new Error(`attention ${o.label}: head_dim ${o.headDim} must be a multiple of 4`);
  }
  if (o.heads % o.kvHeads !== 0) {
    throw new Error(`attention ${o.label}: ${o.heads} heads not divisible by ${o.kvHeads}`);
  }
  const rows = o.sequences * o.newTokens;
  return launch(device, {
    label: o.label,
    kernel: "attention_cache",
    source: () => attentionCacheSource(o.headDim),
    consts: {
      R: rows,
      TN: o.newTokens,
      NH: o.heads,
      NKV: o.kvHeads,
      D: o.headDim,
      SLOTS: o.slots,
      SCALE: 1 / Math.sqrt(o.headDim),
    },
    buffers: [o.q, o.kCache, o.vCache, o.pos, o.out],
    invocations: rows * o.heads,
  });
}

/** The position of row r of a step: pos[r / TN] + r % TN. */
function rowPosition(pos: ArrayLike<number>, r: number, newTokens: number): number {
  return pos[Math.floor(r / newTokens)] + (r % newTokens);
}

/**
 * Float64 reference of {@link qkNormRopeAtStep} (one member's w): x (R, NH, D) normalised per
 * head and rotated at each row's position, the angle p·θ^(−2i/D) computed in float64.
 */
export function qkNormRopeAtReference(
  x: Float32Array,
  w: Float32Array,
  o: StepRows & {
    pos: ArrayLike<number>;
    heads: number;
    headDim: number;
    positions: number;
    eps: number;
    theta: number;
  },
): Float64Array {
  const D = o.headDim, half = D / 2, rows = o.sequences * o.newTokens;
  const y = new Float64Array(rows * o.heads * D);
  for (let r = 0; r < rows; r++) {
    const p = Math.min(rowPosition(o.pos, r, o.newTokens), o.positions - 1);
    for (let h = 0; h < o.heads; h++) {
      const base = (r * o.heads + h) * D;
      let ss = 0;
      for (let j = 0; j < D; j++) ss += x[base + j] ** 2;
      const inv = 1 / Math.sqrt(ss / D + o.eps);
      for (let j = 0; j < half; j++) {
        const a = w[j] * x[base + j] * inv, b = w[j + half] * x[base + j + half] * inv;
        const angle = p / Math.pow(o.theta, (2 * j) / D);
        y[base + j] = a * Math.cos(angle) - b * Math.sin(angle);
        y[base + j + half] = b * Math.cos(angle) + a * Math.sin(angle);
      }
    }
  }
  return y;
}

/**
 * Reference of {@link kvCacheWriteStep}: a copy of `cache` (S, SLOTS, W) with each row of `rows`
 * (R, W) written to its slot, slots past the cache skipped.
 */
export function kvCacheWriteReference(
  cache: Float32Array,
  rows: Float32Array,
  o: StepRows & { pos: ArrayLike<number>; slots: number; width: number },
): Float32Array {
  const out = cache.slice();
  for (let r = 0; r < o.sequences * o.newTokens; r++) {
    const seq = Math.floor(r / o.newTokens), slot = rowPosition(o.pos, r, o.newTokens);
    if (slot >= o.slots) continue;
    out.set(rows.subarray(r * o.width, (r + 1) * o.width), (seq * o.slots + slot) * o.width);
  }
  return out;
}

/**
 * Float64 reference of {@link attentionCacheStep}: q (R, NH, D) over kc, vc (S, SLOTS, NKV, D),
 * each query over slots 0..min(p, SLOTS − 1).
 */
export function attentionCacheReference(
  q: Float32Array,
  kc: Float32Array,
  vc: Float32Array,
  o: StepRows & {
    pos: ArrayLike<number>;
    slots: number;
    heads: number;
    kvHeads: number;
    headDim: number;
  },
): Float64Array {
  const { heads: NH, kvHeads: NKV, headDim: D, slots } = o;
  const rows = o.sequences * o.newTokens;
  const out = new Float64Array(rows * NH * D);
  const scale = 1 / Math.sqrt(D);
  for (let r = 0; r < rows; r++) {
    const seq = Math.floor(r / o.newTokens);
    const last = Math.min(rowPosition(o.pos, r, o.newTokens), slots - 1);
    for (let h = 0; h < NH; h++) {
      const g = Math.floor(h / (NH / NKV)), qo = (r * NH + h) * D;
      const scores: number[] = [];
      for (let s = 0; s <= last; s++) {
        const ko = ((seq * slots + s) * NKV + g) * D;
        let dot = 0;
        for (let j = 0; j < D; j++) dot += q[qo + j] * kc[ko + j];
        scores.push(dot * scale);
      }
      const mx = Math.max(...scores);
      const e = scores.map((s) => Math.exp(s - mx));
      const z = e.reduce((a, b) => a + b, 0);
      for (let s = 0; s <= last; s++) {
        const vo = ((seq * slots + s) * NKV + g) * D;
        for (let j = 0; j < D; j++) out[qo + j] += (e[s] / z) * vc[vo + j];
      }
    }
  }
  return out;
}
