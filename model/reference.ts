/**
 * A float64 Qwen3 forward and log-likelihood fitness on the CPU, written from HF's
 * modeling_qwen3.py semantics independently of the WGSL kernels. Slow; for tests on small
 * models (every kernel and the whole forward are checked against it).
 *
 * @module
 */
import type { Qwen3Config } from "./config.ts";
import type { TokenBatch } from "./forward.ts";

/** Float64 R(x;θ) per sample, and the logits (T, V) of each row when `keepLogits`. */
export function referenceScore(
  config: Qwen3Config,
  weights: ReadonlyMap<string, Float32Array>,
  batch: TokenBatch,
  options: { keepLogits?: boolean } = {},
): { perSample: number[]; logits: Float64Array[] } {
  const c = config, H = c.hiddenSize, D = c.headDim, NH = c.numHeads, NKV = c.numKvHeads;
  const w = (name: string) => {
    const t = weights.get(name);
    if (!t) throw new Error(`reference: missing ${name}`);
    return t;
  };
  const linear = (
    x: Float64Array,
    rows: number,
    name: string,
    inF: number,
    outF: number,
    bias?: string,
  ) => {
    const W = w(name), b = bias ? w(bias) : null;
    const y = new Float64Array(rows * outF);
    for (let r = 0; r < rows; r++) {
      for (let o = 0; o < outF; o++) {
        let s = b ? b[o] : 0;
        for (let i = 0; i < inF; i++) s += x[r * inF + i] * W[o * inF + i];
        y[r * outF + o] = s;
      }
    }
    return y;
  };
  const rmsnorm = (x: Float64Array, rows: number, dim: number, weight: Float32Array) => {
    const y = new Float64Array(rows * dim);
    for (let r = 0; r < rows; r++) {
      let ss = 0;
      for (let i = 0; i < dim; i++) ss += x[r * dim + i] ** 2;
      const inv = 1 / Math.sqrt(ss / dim + c.rmsNormEps);
      for (let i = 0; i < dim; i++) y[r * dim + i] = weight[i] * x[r * dim + i] * inv;
    }
    return y;
  };
  const perSample: number[] = [];
  const logitsOut: Float64Array[] = [];
  for (let b = 0; b < batch.inputIds.length; b++) {
    const ids = batch.inputIds[b], mask = batch.attentionMask[b], T = ids.length;
    let x = new Float64Array(T * H);
    const E = w("model.embed_tokens.weight");
    ids.forEach((id, t) => {
      for (let i = 0; i < H; i++) x[t * H + i] = E[id * H + i];
    });
    for (let l = 0; l < c.numLayers; l++) {
      const p = `model.layers.${l}.`;
      const bias = (n: string) => (c.attentionBias ? `${p}self_attn.${n}.bias` : undefined);
      const xn = rmsnorm(x, T, H, w(`${p}input_layernorm.weight`));
      const q = linear(xn, T, `${p}self_attn.q_proj.weight`, H, NH * D, bias("q_proj"));
      const k = linear(xn, T, `${p}self_attn.k_proj.weight`, H, NKV * D, bias("k_proj"));
      const v = linear(xn, T, `${p}self_attn.v_proj.weight`, H, NKV * D, bias("v_proj"));
      const qn = rope(
        rmsnorm(q, T * NH, D, w(`${p}self_attn.q_norm.weight`)),
        T,
        NH,
        D,
        c.ropeTheta,
      );
      const kn = rope(
        rmsnorm(k, T * NKV, D, w(`${p}self_attn.k_norm.weight`)),
        T,
        NKV,
        D,
        c.ropeTheta,
      );
      const attn = new Float64Array(T * NH * D);
      for (let h = 0; h < NH; h++) {
        const g = Math.floor(h / (NH / NKV));
        for (let t = 0; t < T; t++) {
          const scores: [number, number][] = [];
          for (let s = 0; s <= t; s++) {
            if (!mask[s]) continue;
            let dot = 0;
            for (let j = 0; j < D; j++) dot += qn[(t * NH + h) * D + j] * kn[(s * NKV + g) * D + j];
            scores.push([s, dot / Math.sqrt(D)]);
          }
          if (scores.length === 0) continue;
          const mx = Math.max(...scores.map((e) => e[1]));
          const z = scores.reduce((a, e) => a + Math.exp(e[1] - mx), 0);
          for (const [s, sc] of scores) {
            const p = Math.exp(sc - mx) / z;
            for (let j = 0; j < D; j++) attn[(t * NH + h) * D + j] += p * v[(s * NKV + g) * D + j];
          }
        }
      }
      const o = linear(attn, T, `${p}self_attn.o_proj.weight`, NH * D, H, bias("o_proj"));
      x = x.map((xi, i) => xi + o[i]);
      const xn2 = rmsnorm(x, T, H, w(`${p}post_attention_layernorm.weight`));
      const I = c.intermediateSize;
      const gate = linear(xn2, T, `${p}mlp.gate_proj.weight`, H, I);
      const up = linear(xn2, T, `${p}mlp.up_proj.weight`, H, I);
      const act = gate.map((gv, i) => (gv / (1 + Math.exp(-gv))) * up[i]);
      const down = linear(act, T, `${p}mlp.down_proj.weight`, I, H);
      x = x.map((xi, i) => xi + down[i]);
    }
    const hN = rmsnorm(x, T, H, w("model.norm.weight"));
    const head = c.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    const logits = linear(hN, T, head, H, c.vocabSize);
    if (options.keepLogits) logitsOut.push(logits);
    let sum = 0, n = 0;
    for (let t = 0; t + 1 < T; t++) {
      if (!mask[t + 1]) continue;
      const row = logits.subarray(t * c.vocabSize, (t + 1) * c.vocabSize);
      let mx = -Infinity;
      for (const z of row) mx = Math.max(mx, z);
      let se = 0;
      for (const z of row) se += Math.exp(z - mx);
      sum += row[ids[t + 1]] - mx - Math.log(se);
      n++;
    }
    perSample.push(n > 0 ? sum / n : 0);
  }
  return { perSample, logits: logitsOut };
}

function rope(x: Float64Array, T: number, heads: number, D: number, theta: number): Float64Array {
  const half = D / 2;
  const y = new Float64Array(x.length);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < heads; h++) {
      const base = (t * heads + h) * D;
      for (let i = 0; i < half; i++) {
        const ang = t / Math.pow(theta, (2 * i) / D);
        const a = x[base + i], b = x[base + i + half];
        y[base + i] = a * Math.cos(ang) - b * Math.sin(ang);
        y[base + i + half] = b * Math.cos(ang) + a * Math.sin(ang);
      }
    }
  }
  return y;
}
