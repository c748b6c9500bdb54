/**
 * Causal GQA attention wrapper and its float64 reference.
 *
 * Tests: tests/kernels_test.ts (WGSL against attentionReference), tests/native_test.ts (CPU).
 *
 * @module
 */
import type { Device, DeviceBuffer } from "./device.ts";
import { fillMarkers, launch, type Step, wgslSource } from "./program.ts";

/** Shapes of one attention call. */
export interface AttentionShape {
  batch: number;
  seqLen: number;
  heads: number;
  kvHeads: number;
  headDim: number;
}

let template: string | null = null;

/**
 * Queries per invocation, for speed: each loaded key and value row serves 8 queries. Measured on
 * lavapipe (B=32, T=64, 4 heads, d=32) on a Zen 5: 7.0 ms with one query per invocation, 5.8 ms
 * with 2, 4.7 with 4, 3.8 with 8, 3.5 with 16; at d=128, 8 beat 4 by 20%. 16 doubles the
 * registers and the compile.
 */
const QUERY_BLOCK = 8;

/**
 * Each query block on llvmpipe over lavapipe, 2 cores of a Zen 3 (the machine of
 * kernels/matmul.ts's tile tables, the same session): ms per dispatch at B=32, T=64, 4 heads,
 * 2 kv heads, d=32 (GPU timestamps, best of 6), and seconds to compile with an empty shader
 * cache at d=32 (the first dispatch of a text eval's attention).
 */
const LAVAPIPE_QUERY_BLOCKS = [
  { qb: 1, ms: 64.6, compileS: 0.26 },
  { qb: 2, ms: 35.3, compileS: 0.46 },
  { qb: 4, ms: 19.0, compileS: 0.79 },
  { qb: 8, ms: 13.9, compileS: 2.0 },
];

/**
 * Queries per invocation for an attention of `shape` whose pipeline runs `runs` times. Left out
 * (a training run), speed alone: {@link QUERY_BLOCK}. Given, on lavapipe, the block with the
 * least cold compile time plus `runs` times its run time (scaled from the table by the causal
 * work B·heads·T(T+1)/2·d), which for a one-off eval is a block of 1 or 2: 8 takes 2 s to compile.
 */
export function defaultQueryBlock(device: Device, shape: AttentionShape, runs = Infinity): number {
  if (runs === Infinity || !/llvmpipe|lavapipe/i.test(device.name)) return QUERY_BLOCK;
  const causal = (s: AttentionShape) =>
    s.batch * s.heads * s.seqLen * (s.seqLen + 1) / 2 * s.headDim;
  const scale = causal(shape) /
    causal({ batch: 32, seqLen: 64, heads: 4, kvHeads: 2, headDim: 32 });
  let best = LAVAPIPE_QUERY_BLOCKS[0];
  const cost = (b: typeof best) => b.compileS + runs * b.ms / 1000 * scale;
  for (const b of LAVAPIPE_QUERY_BLOCKS) if (cost(b) < cost(best)) best = b;
  return best.qb;
}

/**
 * The kernel for one head_dim: the .wgsl with its //@ markers written out as named registers,
 * QB queries (qi_j) and accumulators (ai_j) and one key/value row (kj, vj) of D/4 vec4s each.
 */
function attentionSource(headDim: number, queryBlock: number): string {
  template ??= wgslSource(new URL("./attention.wgsl", import.meta.url));
  const r = [...Array(headDim / 4).keys()];
  const qs = [...Array(queryBlock).keys()];
  const parts: Record<string, string[]> = {
    "q-load": qs.flatMap((i) => [
      // A query past the end reads row T−1 (in bounds) and is never stored.
      `let qb${i} = ((b * T + min(t0 + ${i}u, T - 1u)) * NH + h) * D4;`,
      ...r.map((j) => `let q${i}_${j} = q[qb${i} + ${j}u] * SCALE;`),
      ...r.map((j) => `var a${i}_${j} = vec4f(0.0);`),
      `var m${i} = -3.0e38;`,
      `var l${i} = 0.0;`,
    ]),
    "kv-load": r.flatMap((j) => [`let k${j} = k[kBase + ${j}u];`, `let v${j} = v[kBase + ${j}u];`]),
    queries: qs.flatMap((i) => [
      `if (s <= t0 + ${i}u) {`,
      `  var d${i} = q${i}_0 * k0;`,
      ...r.slice(1).map((j) => `  d${i} += q${i}_${j} * k${j};`),
      `  let sc${i} = d${i}.x + d${i}.y + d${i}.z + d${i}.w;`,
      `  if (sc${i} > m${i}) {`,
      `    let c${i} = exp(m${i} - sc${i});`,
      `    l${i} *= c${i};`,
      ...r.map((j) => `    a${i}_${j} *= c${i};`),
      `    m${i} = sc${i};`,
      `  }`,
      `  let p${i} = exp(sc${i} - m${i});`,
      `  l${i} += p${i};`,
      ...r.map((j) => `  a${i}_${j} += p${i} * v${j};`),
      `}`,
    ]),
    store: qs.flatMap((i) => [
      `if (t0 + ${i}u < T) {`,
      `  let inv${i} = select(0.0, 1.0 / l${i}, l${i} > 0.0);`,
      ...r.map((j) => `  out[qb${i} + ${j}u] = a${i}_${j} * inv${i};`),
      `}`,
    ]),
  };
  return fillMarkers("attention.wgsl", template, parts);
}

/** out = softmax(q·kᵀ/√d + causal + key padding)·v per query head, over its kv head. */
export function attentionStep(
  device: Device,
  o: AttentionShape & {
    label: string;
    q: DeviceBuffer;
    k: DeviceBuffer;
    v: DeviceBuffer;
    mask: DeviceBuffer;
    out: DeviceBuffer;
    /** Queries per invocation; default {@link QUERY_BLOCK} (any block gives the same bytes). */
    queryBlock?: number;
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
  const qb = o.queryBlock ?? QUERY_BLOCK;
  return launch(device, {
    label: o.label,
    kernel: "attention",
    source: () => attentionSource(o.headDim, qb),
    consts: {
      B: o.batch,
      T: o.seqLen,
      NH: o.heads,
      NKV: o.kvHeads,
      D: o.headDim,
      SCALE: 1 / Math.sqrt(o.headDim),
      QB: qb,
    },
    buffers: [o.q, o.k, o.v, o.mask, o.out],
    invocations: o.batch * o.heads * Math.ceil(o.seqLen / qb),
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
