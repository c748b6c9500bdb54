/**
 * The native CPU kernels (kernels/cpu/esflow.c through kernels/cpu/native.ts) against float64
 * references, on random inputs with ragged shapes, offsets, strides and several members: the
 * project's references where they exist (matmul, rmsnorm, swiglu, attention, log-likelihood,
 * Philox and its normals, low-rank factors, checksum, the ES update, the whole Qwen3 forward),
 * small ones here for the rest. The ES kernels are also checked bit for bit against an f32
 * emulation in TypeScript fed the kernels' own normals, which pins their arithmetic, the
 * counters and the bf16 rounding bits. Results must not change between calls or thread counts.
 */
import { assert, assertClose, assertEquals, randn, seeded } from "./helpers.ts";
import { loadNative, type Native } from "../kernels/cpu/native.ts";
import { matmulReference, matmulSwigluReference } from "../kernels/matmul.ts";
import { rmsnormReference } from "../kernels/rmsnorm.ts";
import { swigluReference } from "../kernels/swiglu.ts";
import { attentionReference } from "../kernels/attention.ts";
import { ropeTables } from "../kernels/qk_norm_rope.ts";
import { logLikelihoodReference, NO_TARGET, scoredTargets } from "../kernels/log_likelihood.ts";
import { gaussianNoise, philox4x32_10, seedKey } from "../kernels/philox.ts";
import { encodePerturbParams, encodeUpdateParams, ROUNDING_STREAM } from "../kernels/es_update.ts";
import { lowRankCounterIds, lowRankFactors } from "../kernels/lowrank.ts";
import { tensorSums } from "../kernels/checksum.ts";
import {
  noiseCoefficients,
  noiseMember,
  rankShape,
  shapeFitness,
  type Shaping,
  updateCoefficients,
} from "../pipeline/es.ts";
import { referenceScore } from "../model/reference.ts";
import type { Qwen3Config } from "../model/config.ts";

const native: Native = await loadNative();

const f = Math.fround;

/** One case of tests/fixtures/es_update.json (tests/es_test.ts EsCase). */
interface EsCase {
  name: string;
  input: {
    theta: number[];
    eps: number[][];
    r: number[];
    sigma: number;
    alpha: number;
    shaping: Shaping;
    nes: boolean;
    antithetic: boolean;
  };
  expected: { theta: number[] };
}

/**
 * |got − want| ≤ rtol·bound + atol elementwise, where bound is the magnitude the error scales
 * with (Σ|terms| for a dot product); bound 0 marks an element the kernel must leave untouched,
 * which must then equal `want` exactly.
 */
function assertWithin(
  got: ArrayLike<number>,
  want: ArrayLike<number>,
  bound: ArrayLike<number>,
  tol: { rtol: number; atol?: number },
  label: string,
): void {
  assertEquals(got.length, want.length, `${label}: length`);
  for (let i = 0; i < got.length; i++) {
    const limit = bound[i] === 0 ? 0 : tol.rtol * bound[i] + (tol.atol ?? 0);
    const d = Math.abs(got[i] - want[i]);
    if (!(d <= limit) && !(bound[i] === 0 && Object.is(got[i], want[i]))) {
      throw new Error(`${label}: element ${i} is ${got[i]}, expected ${want[i]} (±${limit})`);
    }
  }
}

function abs(a: Float32Array): Float32Array {
  return a.map(Math.abs);
}

function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function sameBytes(a: ArrayBufferView, b: ArrayBufferView): boolean {
  const x = bytesOf(a), y = bytesOf(b);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

/** Shard-table record (kernels/shard_record.wgsl) as es_update.ts writeShardTable packs it. */
function shardRecord(o: {
  start: number;
  count: number;
  tensor: number;
  numel: number;
  multiplier: number;
  src?: number;
  dst?: number;
  memberStride?: number;
}): Uint32Array {
  const w = new Uint32Array(8);
  w.set([o.start, o.count, o.tensor, o.numel]);
  new Float32Array(w.buffer)[4] = o.multiplier;
  w.set([o.src ?? 0, o.dst ?? 0, o.memberStride ?? 0], 5);
  return w;
}

/** bf16 bits (round to nearest even) of f32 values. */
function toBf16(x: Float32Array): Uint16Array {
  const bits = new Uint32Array(x.buffer, x.byteOffset, x.length);
  return Uint16Array.from(bits, (b) => (b + 0x7FFF + ((b >> 16) & 1)) >>> 16);
}

function bf16Value(h: number): number {
  return new Float32Array(new Uint32Array([h << 16]).buffer)[0];
}

function f32Bits(v: number): number {
  return new Uint32Array(new Float32Array([v]).buffer)[0];
}

Deno.test("native: loads, names its BLAS and thread count", () => {
  assert(native.blas.path.length > 0 && native.blas.config.length > 0, native.info);
  assert(native.info.includes(" via ") && native.info.includes("thread"), native.info);
  assert(native.threads >= 1);
});

Deno.test("native: Philox words equal the Random123 known answers and the TypeScript twin", () => {
  const kat = JSON.parse(
    Deno.readTextFileSync(new URL("./fixtures/philox4x32_10_kat.json", import.meta.url)),
  ) as { cases: { counter: string[]; key: string[]; expected: string[] }[] };
  const hex = (w: string[]) => w.map((h) => parseInt(h, 16));
  for (const c of kat.cases) {
    assertEquals([...native.philox(hex(c.counter), hex(c.key))], hex(c.expected));
  }
  const rng = seeded(11);
  const u32 = () => Math.floor(rng() * 2 ** 32) >>> 0;
  for (let i = 0; i < 500; i++) {
    const counter = [u32(), u32(), u32(), u32()], key = [u32(), u32()];
    assertEquals([...native.philox(counter, key)], [...philox4x32_10(counter, key)]);
  }
});

Deno.test("native: normals match gaussianNoise within 1e-6, from any start element", () => {
  const seed = 2 ** 33 + 987654321, iteration = 17, member = 5, tensor = 42, count = 1 << 16;
  const twin = gaussianNoise(seed, iteration, member, tensor, count);
  const got = native.normals({ seed, iteration, member, tensor, count });
  let worst = 0;
  for (let i = 0; i < count; i++) {
    worst = Math.max(worst, Math.abs(twin[i] - got[i]) / Math.max(1, Math.abs(twin[i])));
  }
  assert(worst <= 1e-6, `native vs twin normals differ by ${worst} (relative to max(1,|z|))`);
  // A window starting mid-block is the same stream: element e never depends on the window.
  const part = native.normals({ seed, iteration, member, tensor, start: 1013, count: 7777 });
  assert(sameBytes(part, got.subarray(1013, 1013 + 7777)), "a window of the stream");
  // Moments of 2^16 normals, 5 standard errors.
  let s = 0, s2 = 0;
  for (const z of got) {
    s += z;
    s2 += z * z;
  }
  const mean = s / count, variance = s2 / count - mean * mean, se = 1 / Math.sqrt(count);
  assert(
    Math.abs(mean) < 5 * se && Math.abs(variance - 1) < 5 * Math.SQRT2 * se,
    `${mean} ${variance}`,
  );
});

/** A matmul case: random operands with member strides padded beyond their extents. */
function matmulCase(o: {
  m: number;
  n: number;
  k: number;
  wRow: number;
  biasOff: number;
  outStride: number;
  outCol: number;
  bias: boolean;
  accumulate: boolean;
  members: number;
  sharedW: boolean;
  pad: number;
  seed: number;
}) {
  const rng = seeded(o.seed);
  const { m, n, k, members } = o;
  const contiguous = o.pad === 0;
  const xMs = m * k + o.pad, wMs = o.sharedW ? 0 : (o.wRow + n) * k + o.pad;
  const outMs = contiguous ? m * o.outStride : m * o.outStride + o.pad, bMs = n + o.biasOff + 1;
  const x = randn(rng, (members - 1) * xMs + m * k);
  const w = randn(rng, (members - 1) * wMs + (o.wRow + n) * k);
  const bias = o.bias ? randn(rng, (members - 1) * bMs + o.biasOff + n) : undefined;
  const out0 = randn(rng, (members - 1) * outMs + m * o.outStride + 3);
  const out = out0.slice();
  native.matmul({ ...o, x, w, bias, out, xMs, wMs, outMs, bMs });
  const want = Float64Array.from(out0), bound = new Float64Array(out0.length);
  for (let z = 0; z < members; z++) {
    const xs = x.subarray(z * xMs, z * xMs + m * k);
    const ws = w.subarray(z * wMs + o.wRow * k, z * wMs + (o.wRow + n) * k);
    const bs = bias?.subarray(z * bMs + o.biasOff, z * bMs + o.biasOff + n);
    const ref = matmulReference(xs, ws, m, k, n, bs);
    const mag = matmulReference(abs(xs), abs(ws), m, k, n, bs && abs(bs));
    for (let r = 0; r < m; r++) {
      for (let c = 0; c < n; c++) {
        const at = z * outMs + r * o.outStride + o.outCol + c;
        want[at] = ref[r * n + c] + (o.accumulate ? out0[at] : 0);
        bound[at] = mag[r * n + c] + (o.accumulate ? Math.abs(out0[at]) : 0) + 1e-30;
      }
    }
  }
  assertWithin(out, want, bound, { rtol: 1e-5 }, `matmul ${JSON.stringify(o)}`);
}

Deno.test("native: matmul with offsets, strides, bias, accumulate and members", () => {
  const base = { wRow: 3, biasOff: 2, outCol: 5, pad: 7, sharedW: false };
  matmulCase({
    ...base,
    m: 37,
    n: 29,
    k: 53,
    outStride: 41,
    bias: true,
    accumulate: true,
    members: 3,
    seed: 1,
  });
  matmulCase({
    ...base,
    m: 1,
    n: 1,
    k: 1,
    outStride: 7,
    bias: false,
    accumulate: false,
    members: 1,
    seed: 2,
  });
  matmulCase({
    ...base,
    m: 64,
    n: 33,
    k: 130,
    outStride: 40,
    bias: true,
    accumulate: false,
    members: 2,
    seed: 3,
  });
  // Shared weights and contiguous members: one sgemm over all rows; the bias still per member.
  matmulCase({
    m: 9,
    n: 17,
    k: 11,
    wRow: 1,
    biasOff: 0,
    outStride: 23,
    outCol: 6,
    bias: true,
    accumulate: true,
    members: 4,
    sharedW: true,
    pad: 0,
    seed: 4,
  });
});

/** A fused gate/up case against matmulSwigluReference, out elements outside the block kept. */
function swigluCase(o: {
  m: number;
  n: number;
  k: number;
  gRow: number;
  uRow: number;
  outStride: number;
  outCol: number;
  members: number;
  sharedW: boolean;
  seed: number;
}) {
  const rng = seeded(o.seed);
  const { m, n, k, members } = o;
  const xMs = m * k + (o.sharedW ? 0 : 5);
  const rowsG = o.gRow + n, rowsU = o.uRow + n;
  const wMs = o.sharedW ? 0 : Math.max(rowsG, rowsU) * k + 3;
  const outMs = o.sharedW ? m * o.outStride : m * o.outStride + 2;
  const x = randn(rng, (members - 1) * xMs + m * k);
  const wg = randn(rng, (members - 1) * wMs + rowsG * k, 0.5);
  const wu = randn(rng, (members - 1) * wMs + rowsU * k, 0.5);
  const out0 = randn(rng, (members - 1) * outMs + m * o.outStride);
  const out = out0.slice();
  native.matmulSwiglu({ ...o, x, wg, wu, out, xMs, wMs, outMs });
  const want = Float64Array.from(out0), bound = new Float64Array(out0.length);
  for (let z = 0; z < members; z++) {
    const xs = x.subarray(z * xMs, z * xMs + m * k);
    const gs = wg.subarray(z * wMs + o.gRow * k, z * wMs + rowsG * k);
    const us = wu.subarray(z * wMs + o.uRow * k, z * wMs + rowsU * k);
    const ref = matmulSwigluReference(xs, gs, us, m, k, n);
    const g = matmulReference(xs, gs, m, k, n), u = matmulReference(xs, us, m, k, n);
    const gMag = matmulReference(abs(xs), abs(gs), m, k, n);
    const uMag = matmulReference(abs(xs), abs(us), m, k, n);
    for (let r = 0; r < m; r++) {
      for (let c = 0; c < n; c++) {
        const i = r * n + c, at = z * outMs + r * o.outStride + o.outCol + c;
        want[at] = ref[i];
        // silu' ≤ 1.1: an error δ in g moves the result by ≤ 1.1·δ·|u|.
        const silu = Math.abs(g[i] / (1 + Math.exp(-g[i])));
        bound[at] = 1.1 * gMag[i] * Math.abs(u[i]) + silu * uMag[i] + Math.abs(ref[i]) + 1e-30;
      }
    }
  }
  assertWithin(out, want, bound, { rtol: 1e-5 }, `matmul_swiglu ${JSON.stringify(o)}`);
}

Deno.test("native: matmul_swiglu with offsets, members, and row and column blocks", () => {
  swigluCase({
    m: 21,
    n: 19,
    k: 27,
    gRow: 2,
    uRow: 5,
    outStride: 30,
    outCol: 4,
    members: 3,
    sharedW: false,
    seed: 5,
  });
  swigluCase({
    m: 6,
    n: 10,
    k: 8,
    gRow: 0,
    uRow: 1,
    outStride: 12,
    outCol: 1,
    members: 3,
    sharedW: true,
    seed: 6,
  });
  // N > 4096 and rows > 2^20/4096: two column blocks and two row blocks of the scratch.
  swigluCase({
    m: 300,
    n: 4100,
    k: 4,
    gRow: 1,
    uRow: 0,
    outStride: 4103,
    outCol: 3,
    members: 1,
    sharedW: false,
    seed: 7,
  });
  // silu(g) for g ≪ 0 is −0, as in PyTorch and the WGSL.
  const out = new Float32Array(1);
  native.matmulSwiglu({
    x: new Float32Array([1]),
    wg: new Float32Array([-200]),
    wu: new Float32Array([3]),
    out,
    m: 1,
    n: 1,
    k: 1,
  });
  assert(Object.is(out[0], -0), `silu(-200)·3 = ${out[0]}`);
});

Deno.test("native: rmsnorm per member, ragged width, and in place", () => {
  const rng = seeded(8);
  const rows = 13, dim = 37, rm = 5, wMs = dim + 3, eps = 1e-6;
  const x = randn(rng, rows * dim, 2), w = randn(rng, 2 * wMs + dim);
  const y = new Float32Array(rows * dim).fill(NaN);
  native.rmsnorm({ x, w, y, rows, dim, eps, rowsPerMember: rm, wMs });
  const want = new Float64Array(rows * dim);
  for (let r0 = 0; r0 < rows; r0 += rm) {
    const n = Math.min(rm, rows - r0), m = r0 / rm;
    const ref = rmsnormReference(x.subarray(r0 * dim, (r0 + n) * dim), w.subarray(m * wMs), {
      rows: n,
      dim,
      eps,
    });
    want.set(ref, r0 * dim);
  }
  assertClose(y, want, { rtol: 1e-5, atol: 1e-6 });
  native.rmsnorm({ x, w, y: x, rows, dim, eps, rowsPerMember: rm, wMs });
  assert(sameBytes(x, y), "in place gives the same bytes");
});

Deno.test("native: embedding gathers one table shard per member, other rows untouched", () => {
  const rng = seeded(9);
  const rows = 11,
    hidden = 13,
    rowStart = 20,
    tableRows = 7,
    rm = 4,
    tableMs = tableRows * hidden + 5;
  const ids = Uint32Array.from({ length: rows }, () => Math.floor(rng() * 40));
  ids[0] = rowStart;
  ids[1] = rowStart + tableRows - 1;
  ids[2] = rowStart + tableRows; // outside the shard
  const table = randn(rng, 2 * tableMs + tableRows * hidden);
  const x = new Float32Array(rows * hidden).fill(-7);
  native.embedding({
    ids,
    table,
    x,
    rows,
    hidden,
    rowStart,
    tableRows,
    rowsPerMember: rm,
    tableMs,
  });
  for (let r = 0; r < rows; r++) {
    const id = ids[r], inside = id >= rowStart && id < rowStart + tableRows;
    for (let c = 0; c < hidden; c++) {
      const want = inside ? table[Math.floor(r / rm) * tableMs + (id - rowStart) * hidden + c] : -7;
      assertEquals(x[r * hidden + c], want, `row ${r} col ${c}`);
    }
  }
});

Deno.test("native: qk_norm_rope per head and member, positions r mod T", () => {
  const rng = seeded(10);
  const seqLen = 5, rows = 3 * seqLen, heads = 3, headDim = 10, rm = 10, wMs = headDim + 1;
  const eps = 1e-6, half = headDim / 2;
  const x0 = randn(rng, rows * heads * headDim, 3), w = randn(rng, wMs + headDim);
  const { cos, sin } = ropeTables({ seqLen, headDim, theta: 10000 });
  const x = x0.slice();
  native.qkNormRope({ x, w, cos, sin, rows, seqLen, heads, headDim, eps, rowsPerMember: rm, wMs });
  const want = new Float64Array(x.length);
  for (let r = 0; r < rows; r++) {
    const pos = r % seqLen, wb = Math.floor(r / rm) * wMs;
    for (let h = 0; h < heads; h++) {
      const base = (r * heads + h) * headDim;
      let ss = 0;
      for (let j = 0; j < headDim; j++) ss += x0[base + j] ** 2;
      const inv = 1 / Math.sqrt(ss / headDim + eps);
      for (let j = 0; j < half; j++) {
        const a = w[wb + j] * x0[base + j] * inv, b = w[wb + j + half] * x0[base + j + half] * inv;
        const c = cos[pos * half + j], s = sin[pos * half + j];
        want[base + j] = a * c - b * s;
        want[base + j + half] = b * c + a * s;
      }
    }
  }
  assertClose(x, want, { rtol: 1e-5, atol: 1e-5 });
});

Deno.test("native: attention matches attentionReference, with padding and keyless queries", () => {
  const rng = seeded(12);
  for (
    const s of [
      { batch: 3, seqLen: 19, heads: 6, kvHeads: 2, headDim: 20 },
      { batch: 1, seqLen: 70, heads: 4, kvHeads: 1, headDim: 128 },
      { batch: 2, seqLen: 9, heads: 2, kvHeads: 2, headDim: 6 },
    ]
  ) {
    const rows = s.batch * s.seqLen;
    const q = randn(rng, rows * s.heads * s.headDim, 2);
    const k = randn(rng, rows * s.kvHeads * s.headDim, 2);
    const v = randn(rng, rows * s.kvHeads * s.headDim);
    // Sample 0 is left-padded (queries 0..2 see no key), sample 1 right-padded with a hole.
    const mask = new Uint32Array(rows).fill(1);
    for (let t = 0; t < Math.min(3, s.seqLen); t++) mask[t] = 0;
    if (s.batch > 1) {
      for (let t = s.seqLen - 4; t < s.seqLen; t++) mask[s.seqLen + t] = 0;
      mask[s.seqLen + 2] = 0;
    }
    const out = new Float32Array(rows * s.heads * s.headDim).fill(NaN);
    native.attention({ ...s, q, k, v, mask, out });
    const want = attentionReference(q, k, v, { ...s, mask });
    assertClose(out, want, { rtol: 1e-5, atol: 1e-5 });
    for (let i = 0; i < 3 * s.heads * s.headDim; i++) assert(out[i] === 0, "no valid key → 0");
  }
});

Deno.test("native: swiglu matches swigluReference, −0 for g ≪ 0", () => {
  const rng = seeded(13);
  const n = 1003;
  const gate0 = randn(rng, n, 4), up = randn(rng, n);
  gate0.set([-200, 200, 0, -0, -88, 89], 0);
  up[0] = 2;
  const gate = gate0.slice();
  native.swiglu({ gate, up });
  assertClose(gate, swigluReference(gate0, up), { rtol: 1e-5, atol: 1e-30 });
  assert(Object.is(gate[0], -0), `silu(-200)·2 = ${gate[0]}`);
  // The scalar tail and the 8-wide body compute the same function.
  const tail = gate0.slice(0, 7);
  native.swiglu({ gate: tail, up: up.slice(0, 7) });
  assert(sameBytes(tail, gate.subarray(0, 7)), "tail = body");
});

Deno.test("native: logsumexp chunks and log-likelihood match logLikelihoodReference", () => {
  const rng = seeded(14);
  const batch = 3, seqLen = 7, vocab = 301, rows = batch * seqLen;
  const logits = randn(rng, rows * vocab, 5);
  const ids = Array.from(
    { length: batch },
    () => Array.from({ length: seqLen }, () => Math.floor(rng() * vocab)),
  );
  const mask = [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0, 0]];
  const targets = scoredTargets(ids, mask, seqLen);
  const state = new Float32Array(rows * 3);
  let start = 0;
  for (const width of [128, 100, 73]) {
    const chunk = new Float32Array(rows * width);
    for (let r = 0; r < rows; r++) {
      chunk.set(logits.subarray(r * vocab + start, r * vocab + start + width), r * width);
    }
    native.logsumexpChunk({
      logits: chunk,
      targets,
      state,
      rows,
      width,
      start,
      first: start === 0,
    });
    start += width;
  }
  for (let r = 0; r < rows; r++) {
    if (targets[r] === NO_TARGET) {
      // A row with no target is skipped: its state is left as it was.
      assertEquals([...state.subarray(3 * r, 3 * r + 3)], [0, 0, 0], `row ${r} untouched`);
      continue;
    }
    const z = logits.subarray(r * vocab, (r + 1) * vocab);
    const mx = Math.max(...z);
    const sum = z.reduce((s, v) => s + Math.exp(v - mx), 0);
    assertEquals(state[3 * r], mx, `row ${r} max`);
    assertClose([state[3 * r + 1]], [sum], { rtol: 1e-5, atol: 0 });
    assertEquals(state[3 * r + 2], z[targets[r]], `row ${r} target logit`);
  }
  const r = new Float32Array(batch).fill(NaN);
  native.logLikelihood({ targets, state, r, batch, seqLen });
  const want = logLikelihoodReference(logits, targets, { batch, seqLen, vocab });
  assertClose(r, want, { rtol: 1e-5, atol: 1e-5 });
  assertEquals(r[2], 0, "a sample with nothing scored");
});

Deno.test("native: accumulate adds in order, exactly as f32", () => {
  const rng = seeded(15);
  const r = randn(rng, 40, 1e3), total = new Float32Array([0.1, 99]);
  native.accumulate({ r, total: total.subarray(0, 1), batch: 29, offset: 7 });
  let s = f(0.1);
  for (let b = 0; b < 29; b++) s = f(s + r[7 + b]);
  assertEquals(total[0], s);
  assertEquals(total[1], 99);
});

Deno.test("native: checksum shards add up to tensorSums of the whole tensor", () => {
  const rng = seeded(16);
  const data = randn(rng, 100003);
  const words = new Uint32Array(data.buffer);
  const sums = new Uint32Array(2);
  for (const [a, b] of [[0, 40000], [40000, 40001], [40001, 100003]]) {
    native.checksum({ x: words.subarray(a, b), base: a, sums });
  }
  assertEquals([...sums], tensorSums(data));
});

Deno.test("native: sum of squares partials equal float64 sums of each run, f32 and bf16", () => {
  const rng = seeded(19);
  const n = 100003, per = 1000, groups = Math.ceil(n / per);
  const data = randn(rng, n, 3);
  const partials = new Float32Array(groups + 1).fill(-1);
  native.sumSquares({ x: new Uint32Array(data.buffer), n, per, bf16: false, partials });
  for (let g = 0; g < groups; g++) {
    let want = 0;
    for (let i = g * per; i < Math.min(n, (g + 1) * per); i++) want += data[i] * data[i];
    assertEquals(partials[g], Math.fround(want), `f32 partial ${g}`);
  }
  assertEquals(partials[groups], -1, "nothing past the partials");
  // bf16 pairs: element 2k in word k's low half; an odd count leaves the last high half unread
  // (random bits there would change the last partial if it were).
  const m = 4001, words = new Uint32Array(Math.ceil(m / 2));
  for (let k = 0; k < words.length; k++) words[k] = (rng() * 0x100000000) >>> 0 & 0x3fff3fff;
  const wide = (i: number) => {
    const w = words[i >> 1];
    return new Float32Array(new Uint32Array([i & 1 ? w & 0xffff0000 : w << 16]).buffer)[0];
  };
  const bp = new Float32Array(Math.ceil(m / 200));
  native.sumSquares({ x: words, n: m, per: 200, bf16: true, partials: bp });
  for (let g = 0; g < bp.length; g++) {
    let want = 0;
    const end = Math.min(m, (g + 1) * 200);
    for (let i = g * 200; i < end; i += 2) {
      want += i + 1 < end ? wide(i) * wide(i) + wide(i + 1) * wide(i + 1) : wide(i) * wide(i);
    }
    assertEquals(bp[g], Math.fround(want), `bf16 partial ${g}`);
  }
});

/** A perturb case: θ [37, 13] shard of 3 rows starting at row 2 (element 26), 3 members. */
function perturbFixture(bf16: boolean) {
  const rng = seeded(bf16 ? 18 : 17);
  const rowSize = 13, numel = 37 * rowSize, start = 2 * rowSize, count = 3 * rowSize + 4;
  const src = 9, dst = 5, memberStride = count + dst + 11, members = 3, tensor = 11;
  const multiplier = 0.75, paramWords = 16, seed = 2 ** 35 + 77, iteration = 123;
  const theta32 = randn(rng, src + count + 6);
  const theta = bf16 ? toBf16(theta32) : theta32;
  const records = Array.from({ length: members }, (_, j) => {
    const m = noiseMember(j, 4, true);
    return { seed, iteration, member: m.index, scale: m.sign * 0.01 * (j + 1) };
  });
  const params = encodePerturbParams(records, paramWords * 4);
  const shard = shardRecord({ start, count, tensor, numel, multiplier, src, dst, memberStride });
  return {
    theta,
    records,
    params,
    paramWords,
    shard,
    start,
    count,
    src,
    dst,
    memberStride,
    members,
    tensor,
    multiplier,
  };
}

Deno.test("native: perturb writes θ + s·m·ε, exact against the f32 sum of its own normals", () => {
  for (const bf16 of [false, true]) {
    const c = perturbFixture(bf16);
    const out = new Float32Array((c.members - 1) * c.memberStride + c.dst + c.count + 3).fill(-9);
    native.perturb({ ...c, out });
    const thetaAt = (i: number) =>
      bf16 ? bf16Value((c.theta as Uint16Array)[i]) : (c.theta as Float32Array)[i];
    const touched = new Uint8Array(out.length);
    for (let z = 0; z < c.members; z++) {
      const rec = c.records[z];
      const eps = native.normals({ ...rec, tensor: c.tensor, start: c.start, count: c.count });
      const twin = gaussianNoise(rec.seed, rec.iteration, rec.member, c.tensor, c.start + c.count);
      const s = f(f(rec.scale) * f(c.multiplier));
      for (let i = 0; i < c.count; i++) {
        const at = c.dst + z * c.memberStride + i;
        touched[at] = 1;
        assertEquals(out[at], f(thetaAt(c.src + i) + f(s * eps[i])), `member ${z} element ${i}`);
        const want = thetaAt(c.src + i) + s * twin[c.start + i];
        assert(Math.abs(out[at] - want) <= 1e-6 * Math.abs(s) * 6 + 1e-7 * Math.abs(want), "twin");
      }
    }
    out.forEach((v, i) => assert(touched[i] || v === -9, `element ${i} outside the shard written`));
  }
});

Deno.test("native: es_update with injected noise matches every es_update.json case", () => {
  const cases = (JSON.parse(
    Deno.readTextFileSync(new URL("./fixtures/es_update.json", import.meta.url)),
  ) as { cases: EsCase[] }).cases;
  for (const c of cases) {
    const { theta, eps, r, antithetic } = c.input;
    const d = noiseCoefficients(
      updateCoefficients(shapeFitness(r, c.input.shaping), c.input),
      antithetic,
    );
    const update = encodeUpdateParams({ seed: 1, iteration: 0, coefficients: d });
    const injected = new Float32Array(eps.flat());
    const t = new Float32Array(theta);
    // Two shards, the second starting at element 4 (mid-tensor, a block boundary).
    for (const [start, end] of [[0, 4], [4, theta.length]]) {
      const shard = shardRecord({
        start,
        count: end - start,
        tensor: 0,
        numel: theta.length,
        multiplier: 1,
      });
      native.esUpdate({ shard, update, theta: t.subarray(start, end), injected });
    }
    try {
      assertClose(t, c.expected.theta, { rtol: 1e-6, atol: 0 });
    } catch (e) {
      throw new Error(`${c.name}: ${(e as Error).message}`);
    }
  }
});

/**
 * θ [37, rowSize] in shards of shardRows rows (starts not multiples of 4; bf16 needs even ones),
 * updated by 6 antithetic members.
 */
function updateFixture(seedOffset: number, rowSize = 13, shardRows = 2) {
  const numel = 37 * rowSize;
  const seed = 2 ** 40 + 12345 + seedOffset, iteration = 9, tensor = 3, multiplier = 0.75;
  const population = 6;
  const r = Array.from(randn(seeded(2 + seedOffset), population));
  const c = updateCoefficients(rankShape(r), { alpha: 0.4, sigma: 1e-3, population });
  const d = noiseCoefficients(c, true);
  const update = encodeUpdateParams({ seed, iteration, coefficients: d });
  const shards: { start: number; count: number }[] = [];
  for (let row = 0; row < 37; row += shardRows) {
    shards.push({ start: row * rowSize, count: Math.min(shardRows, 37 - row) * rowSize });
  }
  return { numel, seed, iteration, tensor, multiplier, population, c, d, update, shards };
}

/** Runs es_update over every shard of θ (f32 or bf16 words) in place. */
function updateShards(
  u: ReturnType<typeof updateFixture>,
  theta: Float32Array | Uint16Array,
  injected?: Float32Array,
): void {
  for (const s of u.shards) {
    const shard = shardRecord({ ...s, tensor: u.tensor, numel: u.numel, multiplier: u.multiplier });
    native.esUpdate({
      shard,
      update: u.update,
      theta: theta.subarray(s.start, s.start + s.count),
      injected,
    });
  }
}

/** The noises of the update as es_update reads them when injected: (n, numel), the kernel's own. */
function ownNoise(u: ReturnType<typeof updateFixture>): Float32Array {
  const eps = new Float32Array(u.d.length * u.numel);
  for (let i = 0; i < u.d.length; i++) {
    native.normals({
      seed: u.seed,
      iteration: u.iteration,
      member: i,
      tensor: u.tensor,
      count: u.numel,
      out: eps.subarray(i * u.numel),
    });
  }
  return eps;
}

Deno.test("native: es_update (f32) equals the float64 update with the twin's noise", () => {
  const u = updateFixture(0);
  const theta0 = randn(seeded(7), u.numel);
  const expected = Float64Array.from(theta0);
  for (let j = 0; j < u.population; j++) {
    const { index, sign } = noiseMember(j, u.population, true);
    const eps = gaussianNoise(u.seed, u.iteration, index, u.tensor, u.numel);
    for (let e = 0; e < u.numel; e++) expected[e] += u.multiplier * u.c[j] * sign * eps[e];
  }
  const theta = theta0.slice();
  updateShards(u, theta);
  const delta = theta.map((x, e) => x - theta0[e]);
  assertClose(delta, expected.map((x, e) => x - theta0[e]), { rtol: 1e-5, atol: 1e-6 });
  // Regenerated noise is bit for bit the injected path fed the kernel's own normals, and that
  // path is the f32 sum Σ_i d_i·ε_i in order, times m, added once.
  const injected = ownNoise(u), viaInjected = theta0.slice();
  updateShards(u, viaInjected, injected);
  assert(sameBytes(theta, viaInjected), "regenerated = injected(own normals)");
  const d32 = Float32Array.from(u.d);
  for (let e = 0; e < u.numel; e++) {
    let acc = 0;
    for (let i = 0; i < d32.length; i++) acc = f(acc + f(d32[i] * injected[i * u.numel + e]));
    assertEquals(theta[e], f(theta0[e] + f(acc * f(u.multiplier))), `element ${e}`);
  }
});

Deno.test("native: es_update (bf16) rounds stochastically with the rounding stream's bits", () => {
  const u = updateFixture(1, 14, 3);
  const theta0 = toBf16(randn(seeded(19), u.numel, 0.02));
  const injected = ownNoise(u);
  const theta = theta0.slice();
  updateShards(u, theta);
  const viaInjected = theta0.slice();
  updateShards(u, viaInjected, injected);
  assert(sameBytes(theta, viaInjected), "regenerated = injected(own normals)");

  // es_update.ts APPLY_BF16 in TypeScript: the f32 value, then 16 Philox bits of (block,
  // tensor, ROUNDING_STREAM, iteration) added below the kept half.
  const key = seedKey(u.seed), d32 = Float32Array.from(u.d);
  let up = 0, down = 0;
  for (let e = 0; e < u.numel; e++) {
    let acc = 0;
    for (let i = 0; i < d32.length; i++) acc = f(acc + f(d32[i] * injected[i * u.numel + e]));
    const v = f(bf16Value(theta0[e]) + f(acc * f(u.multiplier)));
    const bits = philox4x32_10([e >>> 2, u.tensor, ROUNDING_STREAM, u.iteration], key)[e & 3];
    const want = ((f32Bits(v) + (bits & 0xFFFF)) >>> 16) & 0xFFFF;
    assertEquals(theta[e], want, `element ${e}`);
    if (want !== f32Bits(v) >>> 16) up++;
    else if (f32Bits(v) & 0xFFFF) down++;
    // Either neighbour of the f64 value: the step is kept on average, not lost.
    const exact = bf16Value(theta0[e]) + u.multiplier * Array.from(u.d).reduce(
          (s, di, i) => s + di * injected[i * u.numel + e],
          0,
        );
    const ulp = 2 ** (Math.floor(Math.log2(Math.abs(exact))) - 7);
    assert(Math.abs(bf16Value(theta[e]) - exact) <= ulp * 1.01, `element ${e} off by > 1 ulp`);
  }
  assert(up > 50 && down > 50, `rounded up ${up}, down ${down}: both directions happen`);
});

/** A factor record as kernels/lowrank.ts createFactorTable packs it (11 words). */
function factorRecord(r: {
  tensor: number;
  row0: number;
  rows: number;
  rank: number;
  rowStride: number;
  noiseStride: number;
  kStride: number;
  scaled: boolean;
  multiplier: number;
  noise0?: number;
  span?: number;
}): Uint32Array {
  const w = new Uint32Array(11);
  w.set([
    r.tensor,
    r.row0,
    r.rows,
    r.rank,
    r.rowStride,
    r.noiseStride,
    r.kStride,
    r.scaled ? 1 : 0,
  ]);
  new Float32Array(w.buffer)[8] = r.multiplier;
  w[9] = r.noise0 ?? 0;
  w[10] = r.span ?? 0;
  return w;
}

Deno.test("native: lowrank_factors writes lowRankFactors' A and Bᵀ, scaled and strided", () => {
  const seed = 31337, iteration = 4, tensorId = 6, rank = 3, r4 = 4, O = 11, I = 9;
  const ids = lowRankCounterIds(tensorId);
  const close = (got: number, want: number, what: string) =>
    assert(
      Math.abs(got - want) <= 1e-6 * Math.max(1, Math.abs(want)),
      `${what}: ${got} vs ${want}`,
    );

  // A member's a = s·m·A rows 3..7 as (rows, r4), and its Bᵀ as (r4, I), from a perturb record.
  const member = 2, scale = -0.01, mult = 0.5;
  const params = encodePerturbParams([{ seed, iteration, member, scale }], 32);
  const twin = lowRankFactors(seed, { iteration, member, tensorId, rows: O, cols: I, rank });
  const a = new Float32Array(5 * r4).fill(7);
  native.lowrankFactors({
    factor: factorRecord({
      tensor: ids.a,
      row0: 3,
      rows: 5,
      rank,
      rowStride: r4,
      noiseStride: 0,
      kStride: 1,
      scaled: true,
      multiplier: mult,
    }),
    params,
    mode: "member",
    out: a,
  });
  for (let row = 0; row < 5; row++) {
    for (let k = 0; k < r4; k++) {
      if (k >= rank) assertEquals(a[row * r4 + k], 7, "pad column untouched");
      else close(a[row * r4 + k], f(mult * scale) * twin.a[(row + 3) * rank + k], `a ${row},${k}`);
    }
  }
  const bt = new Float32Array(r4 * I).fill(7);
  native.lowrankFactors({
    factor: factorRecord({
      tensor: ids.b,
      row0: 0,
      rows: I,
      rank,
      rowStride: 1,
      noiseStride: 0,
      kStride: I,
      scaled: false,
      multiplier: 1,
    }),
    params,
    mode: "member",
    out: bt,
  });
  for (let i = 0; i < I; i++) {
    for (let k = 0; k < rank; k++) close(bt[k * I + i], twin.b[i * rank + k], `bt ${k},${i}`);
    assertEquals(bt[rank * I + i], 7, "pad row untouched");
  }

  // The update's Ã for noises 2..5 of 5 (the group's last column past the last noise is 0).
  const coefficients = [0.1, -0.2, 0.3, -0.4, 0.5];
  const update = encodeUpdateParams({ seed, iteration, coefficients });
  const span = 4, noise0 = 2, rows = 6, row0 = 1;
  const at = new Float32Array(rows * span * r4).fill(7);
  native.lowrankFactors({
    factor: factorRecord({
      tensor: ids.a,
      row0,
      rows,
      rank,
      rowStride: span * r4,
      noiseStride: r4,
      kStride: 1,
      scaled: true,
      multiplier: mult,
      noise0,
      span,
    }),
    params: update,
    mode: "update",
    out: at,
  });
  for (let i = 0; i < span; i++) {
    const g = noise0 + i;
    const tw = g < 5
      ? lowRankFactors(seed, { iteration, member: g, tensorId, rows: O, cols: I, rank }).a
      : null;
    for (let row = 0; row < rows; row++) {
      for (let k = 0; k < rank; k++) {
        const got = at[row * span * r4 + i * r4 + k];
        if (!tw) assertEquals(got, 0, "past the last noise");
        else {close(
            got,
            f(mult * f(coefficients[g])) * tw[(row0 + row) * rank + k],
            `Ã ${g},${row},${k}`,
          );}
      }
      assertEquals(at[row * span * r4 + i * r4 + rank], 7, "pad column untouched");
    }
  }
});

Deno.test("native: lowrank_embed adds a[ids]·Bᵀ per member", () => {
  const rng = seeded(20);
  const rows = 10, hidden = 37, r4 = 8, rm = 5, V = 12;
  const aMs = V * r4 + 3, bMs = r4 * hidden + 5;
  const ids = Uint32Array.from({ length: rows }, () => Math.floor(rng() * V));
  const a = randn(rng, aMs + V * r4), bt = randn(rng, bMs + r4 * hidden);
  const x0 = randn(rng, rows * hidden), x = x0.slice();
  native.lowrankEmbed({ ids, a, bt, x, rows, hidden, r4, rowsPerMember: rm, aMs, bMs });
  const want = new Float64Array(rows * hidden), bound = new Float64Array(rows * hidden);
  for (let r = 0; r < rows; r++) {
    const m = Math.floor(r / rm);
    for (let c = 0; c < hidden; c++) {
      let s = x0[r * hidden + c], mag = Math.abs(s);
      for (let k = 0; k < r4; k++) {
        const t = a[m * aMs + ids[r] * r4 + k] * bt[m * bMs + k * hidden + c];
        s += t;
        mag += Math.abs(t);
      }
      want[r * hidden + c] = s;
      bound[r * hidden + c] = mag;
    }
  }
  assertWithin(x, want, bound, { rtol: 1e-6 }, "lowrank_embed");
});

/** Random weights of a small Qwen3 with biases and GQA, in HF names. */
function tinyModel(c: Qwen3Config): Map<string, Float32Array> {
  const rng = seeded(21), H = c.hiddenSize, D = c.headDim, I = c.intermediateSize;
  const w = new Map<string, Float32Array>();
  const put = (name: string, n: number, std = 0.2) => w.set(name, randn(rng, n, std));
  const ones = (name: string, n: number) =>
    w.set(name, Float32Array.from(randn(rng, n, 0.1), (v) => 1 + v));
  put("model.embed_tokens.weight", c.vocabSize * H, 1);
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}.`;
    ones(`${p}input_layernorm.weight`, H);
    ones(`${p}post_attention_layernorm.weight`, H);
    for (
      const [name, out] of [["q", c.numHeads * D], ["k", c.numKvHeads * D], [
        "v",
        c.numKvHeads * D,
      ]] as const
    ) {
      put(`${p}self_attn.${name}_proj.weight`, out * H);
      put(`${p}self_attn.${name}_proj.bias`, out);
    }
    put(`${p}self_attn.o_proj.weight`, H * c.numHeads * D);
    put(`${p}self_attn.o_proj.bias`, H);
    ones(`${p}self_attn.q_norm.weight`, D);
    ones(`${p}self_attn.k_norm.weight`, D);
    put(`${p}mlp.gate_proj.weight`, I * H);
    put(`${p}mlp.up_proj.weight`, I * H);
    put(`${p}mlp.down_proj.weight`, H * I);
  }
  ones("model.norm.weight", H);
  put("lm_head.weight", c.vocabSize * H);
  return w;
}

Deno.test("native: the kernels compose into the Qwen3 forward of model/reference.ts", () => {
  const c: Qwen3Config = {
    vocabSize: 41,
    hiddenSize: 24,
    intermediateSize: 40,
    numLayers: 2,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 8,
    maxPositionEmbeddings: 64,
    rmsNormEps: 1e-6,
    ropeTheta: 10000,
    tieWordEmbeddings: false,
    attentionBias: true,
    initializerRange: 0.2,
    torchDtype: "float32",
  };
  const weights = tinyModel(c), w = (name: string) => weights.get(name)!;
  const T = 9, inputIds = [[5, 9, 1, 40, 7, 3, 0, 0, 0], [2, 4, 6, 8, 10, 12, 14, 16, 18]];
  const attentionMask = [[1, 1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1, 1]];
  const B = inputIds.length, R = B * T, H = c.hiddenSize, D = c.headDim, I = c.intermediateSize;
  const NH = c.numHeads, NKV = c.numKvHeads, eps = c.rmsNormEps;
  const ids = Uint32Array.from(inputIds.flat()), mask = Uint32Array.from(attentionMask.flat());
  const { cos, sin } = ropeTables({ seqLen: T, headDim: D, theta: c.ropeTheta });

  const x = new Float32Array(R * H), xn = new Float32Array(R * H);
  native.embedding({
    ids,
    table: w("model.embed_tokens.weight"),
    x,
    rows: R,
    hidden: H,
    tableRows: c.vocabSize,
  });
  const q = new Float32Array(R * NH * D), k = new Float32Array(R * NKV * D);
  const v = new Float32Array(R * NKV * D), att = new Float32Array(R * NH * D);
  const act = new Float32Array(R * I);
  const linear = (
    input: Float32Array,
    name: string,
    out: Float32Array,
    n: number,
    kIn: number,
    bias?: boolean,
    accumulate?: boolean,
  ) =>
    native.matmul({
      x: input,
      w: w(`${name}.weight`),
      bias: bias ? w(`${name}.bias`) : undefined,
      out,
      m: R,
      n,
      k: kIn,
      accumulate,
    });
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}.`;
    native.rmsnorm({ x, w: w(`${p}input_layernorm.weight`), y: xn, rows: R, dim: H, eps });
    linear(xn, `${p}self_attn.q_proj`, q, NH * D, H, true);
    linear(xn, `${p}self_attn.k_proj`, k, NKV * D, H, true);
    linear(xn, `${p}self_attn.v_proj`, v, NKV * D, H, true);
    native.qkNormRope({
      x: q,
      w: w(`${p}self_attn.q_norm.weight`),
      cos,
      sin,
      rows: R,
      seqLen: T,
      heads: NH,
      headDim: D,
      eps,
    });
    native.qkNormRope({
      x: k,
      w: w(`${p}self_attn.k_norm.weight`),
      cos,
      sin,
      rows: R,
      seqLen: T,
      heads: NKV,
      headDim: D,
      eps,
    });
    native.attention({
      q,
      k,
      v,
      mask,
      out: att,
      batch: B,
      seqLen: T,
      heads: NH,
      kvHeads: NKV,
      headDim: D,
    });
    linear(att, `${p}self_attn.o_proj`, x, H, NH * D, true, true);
    native.rmsnorm({ x, w: w(`${p}post_attention_layernorm.weight`), y: xn, rows: R, dim: H, eps });
    native.matmulSwiglu({
      x: xn,
      wg: w(`${p}mlp.gate_proj.weight`),
      wu: w(`${p}mlp.up_proj.weight`),
      out: act,
      m: R,
      n: I,
      k: H,
    });
    linear(act, `${p}mlp.down_proj`, x, H, I, false, true);
  }
  native.rmsnorm({ x, w: w("model.norm.weight"), y: xn, rows: R, dim: H, eps });
  // The LM head in vocab chunks of 16 (the last ragged), streamed into the log-softmax state.
  const targets = scoredTargets(inputIds, attentionMask, T), state = new Float32Array(R * 3);
  for (let c0 = 0; c0 < c.vocabSize; c0 += 16) {
    const width = Math.min(16, c.vocabSize - c0), chunk = new Float32Array(R * width);
    native.matmul({ x: xn, w: w("lm_head.weight"), wRow: c0, out: chunk, m: R, n: width, k: H });
    native.logsumexpChunk({
      logits: chunk,
      targets,
      state,
      rows: R,
      width,
      start: c0,
      first: c0 === 0,
    });
  }
  const r = new Float32Array(B);
  native.logLikelihood({ targets, state, r, batch: B, seqLen: T });
  const want = referenceScore(c, weights, { inputIds, attentionMask }).perSample;
  assertClose(r, want, { rtol: 1e-5, atol: 2e-5 });
});

Deno.test("native: results are the same bytes on every call and for 1 or 2 threads", () => {
  const rng = seeded(22);
  const m = 1100, n = 600, k = 64; // 3 × 2 tiles of 512
  const x = randn(rng, m * k), wt = randn(rng, n * k), wu = randn(rng, n * k);
  const q = randn(rng, 2 * 64 * 4 * 32), kv = randn(rng, 2 * 64 * 2 * 32);
  const mask = new Uint32Array(128).fill(1);
  const logits = randn(rng, 64 * 1000, 3), targets = new Uint32Array(64).fill(5);
  const theta = randn(rng, 100000);
  const u = updateFixture(2);
  const run = () => {
    const outs: ArrayBufferView[] = [];
    const mm = new Float32Array(m * n);
    native.matmul({ x, w: wt, out: mm, m, n, k });
    const sw = new Float32Array(m * n);
    native.matmulSwiglu({ x, wg: wt, wu, out: sw, m, n, k });
    const att = new Float32Array(q.length);
    native.attention({
      q,
      k: kv,
      v: kv,
      mask,
      out: att,
      batch: 2,
      seqLen: 64,
      heads: 4,
      kvHeads: 2,
      headDim: 32,
    });
    const state = new Float32Array(64 * 3);
    native.logsumexpChunk({ logits, targets, state, rows: 64, width: 1000, start: 0, first: true });
    const y = new Float32Array(m * k);
    native.rmsnorm({ x, w: wt, y, rows: m, dim: k, eps: 1e-6 });
    const z = native.normals({
      seed: 3,
      iteration: 1,
      member: 2,
      tensor: 3,
      start: 5,
      count: 99991,
    });
    const shard = shardRecord({ start: 6, count: 99990, tensor: 1, numel: 100000, multiplier: 1 });
    const params = encodePerturbParams([{ seed: 1, iteration: 2, member: 3, scale: 0.1 }], 32);
    const pert = new Float32Array(99990);
    native.perturb({ shard, params, theta, out: pert });
    const t = theta.slice();
    updateShards(u, t);
    const sums = new Uint32Array(2);
    native.checksum({ x: new Uint32Array(theta.buffer), sums });
    outs.push(mm, sw, att, state, y, z, pert, t, sums);
    return outs;
  };
  const threads = native.threads;
  try {
    native.setThreads(2);
    const a = run(), b = run();
    native.setThreads(1);
    const one = run();
    a.forEach((o, i) => {
      assert(sameBytes(o, b[i]), `output ${i} differs between two calls`);
      assert(sameBytes(o, one[i]), `output ${i} differs between 2 threads and 1`);
    });
  } finally {
    native.setThreads(threads);
  }
});

Deno.test("native: a process that ran parallel kernels exits cleanly", async () => {
  // Deno closes the library at exit while OpenMP's workers sleep in libgomp; unpinned, that
  // crashed about one exit in two. Four runs would all pass by luck 1 time in 16.
  const script = `
    import { loadNative } from ${
    JSON.stringify(new URL("../kernels/cpu/native.ts", import.meta.url).href)
  };
    const n = await loadNative({ threads: 2 });
    const x = new Float32Array(512 * 512), w = new Float32Array(512);
    n.rmsnorm({ x, w, y: x, rows: 512, dim: 512, eps: 1e-6 });
    n.matmul({ x, w: x, out: new Float32Array(512 * 512), m: 512, n: 512, k: 512 });`;
  for (let run = 0; run < 4; run++) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--ext=ts", script],
      stdout: "null",
      stderr: "piped",
    }).output();
    assert(
      out.code === 0,
      `run ${run}: exit code ${out.code}, signal ${out.signal}: ${
        new TextDecoder().decode(out.stderr)
      }`,
    );
  }
});

Deno.test("native: too short an array throws, naming the kernel and the shortfall", () => {
  const e = (fn: () => void) => {
    try {
      fn();
    } catch (err) {
      return (err as Error).message;
    }
    throw new Error("no error thrown");
  };
  const msg = e(() =>
    native.matmul({
      x: new Float32Array(12),
      w: new Float32Array(12),
      out: new Float32Array(8),
      m: 3,
      n: 3,
      k: 4,
    })
  );
  assert(msg.includes("esf_matmul") && msg.includes("out holds 8 elements, needs 9"), msg);
  const shard = shardRecord({ start: 0, count: 100, tensor: 0, numel: 100, multiplier: 1 });
  const msg2 = e(() =>
    native.esUpdate({
      shard,
      update: encodeUpdateParams({ seed: 1, iteration: 0, coefficients: [1] }),
      theta: new Float32Array(99),
    })
  );
  assert(msg2.includes("esf_es_update") && msg2.includes("theta"), msg2);
  const msg3 = e(() =>
    native.attention({
      q: new Float32Array(8),
      k: new Float32Array(8),
      v: new Float32Array(8),
      mask: new Uint32Array(2),
      out: new Float32Array(8),
      batch: 1,
      seqLen: 2,
      heads: 3,
      kvHeads: 2,
      headDim: 4,
    })
  );
  assert(msg3.includes("kv heads"), msg3);
});
