// Every non-matmul kernel against its float64 TypeScript reference, on fresh random inputs,
// at ragged sizes, head_dim ≠ hidden/heads, GQA and MQA, and a sharded embedding table: through
// the kernels' step builders on both backends (tests/native_test.ts calls the native kernels
// directly; here the CPU device binds the same dispatches the WebGPU device runs).
import type { Backend, Device, DeviceBuffer } from "../kernels/device.ts";
import { acquireDevice } from "../kernels/backend.ts";
import {
  assert,
  assertClose,
  assertEquals,
  randn,
  seeded,
  settled,
  testBackends,
} from "./helpers.ts";
import { submitSteps } from "../kernels/program.ts";
import { createTensor } from "../kernels/tensor.ts";
import { rmsnormReference, rmsnormStep } from "../kernels/rmsnorm.ts";
import { qkNormRopeStep, ropeTables } from "../kernels/qk_norm_rope.ts";
import { attentionReference, attentionStep } from "../kernels/attention.ts";
import { swigluReference, swigluStep } from "../kernels/swiglu.ts";
import { embeddingSteps } from "../kernels/embedding.ts";
import {
  logLikelihoodReference,
  logLikelihoodStep,
  logsumexpChunkStep,
  NO_TARGET,
  scoredTargets,
} from "../kernels/log_likelihood.ts";

/** One device per backend for the whole file, made on first use. */
const devices = new Map<Backend, Promise<Device>>();
function device(backend: Backend): Promise<Device> {
  let d = devices.get(backend);
  if (!d) devices.set(backend, d = acquireDevice({ backend, shardBytes: 4096 }));
  return d;
}

function buf(gpu: Device, data: ArrayBufferView & { byteLength: number }): DeviceBuffer {
  const b = gpu.createBuffer("t", data.byteLength, "activations");
  gpu.write(b, data);
  return b;
}

testBackends("rmsnorm matches the float64 reference on ragged rows", async (backend) => {
  const gpu = await device(backend);
  const rng = seeded(1);
  for (const [rows, dim] of [[37, 96], [1, 4], [130, 20]]) {
    const x = randn(rng, rows * dim, 2), w = randn(rng, dim);
    const y = gpu.createBuffer("y", rows * dim * 4, "activations");
    submitSteps(gpu, [
      rmsnormStep(gpu, { label: "n", x: buf(gpu, x), w: buf(gpu, w), y, rows, dim, eps: 1e-6 }),
    ]);
    await settled(gpu);
    assertClose(
      await gpu.readF32(y, rows * dim),
      rmsnormReference(x, w, { rows, dim, eps: 1e-6 }),
      {
        atol: 1e-5,
        rtol: 1e-5,
      },
    );
  }
});

function normRopeReference(
  x: Float32Array,
  w: Float32Array,
  o: { rows: number; seqLen: number; heads: number; headDim: number; theta: number },
): Float64Array {
  const D = o.headDim, half = D / 2;
  const out = new Float64Array(x.length);
  for (let r = 0; r < o.rows; r++) {
    const pos = r % o.seqLen;
    for (let h = 0; h < o.heads; h++) {
      const base = (r * o.heads + h) * D;
      let ss = 0;
      for (let j = 0; j < D; j++) ss += x[base + j] ** 2;
      const inv = 1 / Math.sqrt(ss / D + 1e-6);
      for (let j = 0; j < half; j++) {
        // Independent of the kernel's f32-rounded tables: the angle straight in float64.
        const ang = pos / Math.pow(o.theta, (2 * j) / D);
        const a = w[j] * x[base + j] * inv, b = w[j + half] * x[base + j + half] * inv;
        out[base + j] = a * Math.cos(ang) - b * Math.sin(ang);
        out[base + j + half] = b * Math.cos(ang) + a * Math.sin(ang);
      }
    }
  }
  return out;
}

testBackends("q/k norm + half-split RoPE matches the float64 reference", async (backend) => {
  const gpu = await device(backend);
  const rng = seeded(2);
  for (
    const [batch, seqLen, heads, headDim, theta] of [[2, 13, 3, 16, 10000], [1, 40, 2, 32, 1e6]]
  ) {
    const rows = batch * seqLen;
    const x = randn(rng, rows * heads * headDim), w = randn(rng, headDim);
    const t = ropeTables({ seqLen, headDim, theta });
    const xb = buf(gpu, x);
    submitSteps(gpu, [qkNormRopeStep(gpu, {
      label: "rope",
      x: xb,
      w: buf(gpu, w),
      cos: buf(gpu, t.cos),
      sin: buf(gpu, t.sin),
      rows,
      seqLen,
      heads,
      headDim,
      eps: 1e-6,
    })]);
    const want = normRopeReference(x, w, { rows, seqLen, heads, headDim, theta });
    assertClose(await gpu.readF32(xb, x.length), want, { atol: 2e-5, rtol: 1e-5 });
  }
});

testBackends(
  "attention: causal, key padding, GQA, MQA and MHA match the reference",
  async (backend) => {
    const gpu = await device(backend);
    const rng = seeded(3);
    const cases = [
      { batch: 2, seqLen: 11, heads: 6, kvHeads: 2, headDim: 16 }, // GQA
      { batch: 3, seqLen: 7, heads: 4, kvHeads: 1, headDim: 8 }, // MQA
      { batch: 1, seqLen: 70, heads: 2, kvHeads: 2, headDim: 32 }, // MHA, more rows than a workgroup
    ];
    for (const s of cases) {
      const rows = s.batch * s.seqLen;
      const q = randn(rng, rows * s.heads * s.headDim);
      const k = randn(rng, rows * s.kvHeads * s.headDim);
      const v = randn(rng, rows * s.kvHeads * s.headDim);
      const mask = new Uint32Array(rows).fill(1);
      // Right-pad every row after the first by a different amount.
      for (let b = 1; b < s.batch; b++) {
        for (let t = s.seqLen - 2 * b; t < s.seqLen; t++) mask[b * s.seqLen + t] = 0;
      }
      const inputs = { q: buf(gpu, q), k: buf(gpu, k), v: buf(gpu, v), mask: buf(gpu, mask) };
      // Every query block (queries per invocation) computes each query alike: the same bytes.
      let first: Float32Array | null = null;
      for (const queryBlock of [8, 1, 3]) {
        const out = gpu.createBuffer("out", q.byteLength, "activations");
        submitSteps(gpu, [attentionStep(gpu, { label: "attn", ...inputs, out, ...s, queryBlock })]);
        const got = await gpu.readF32(out, q.length);
        if (!first) {
          first = got;
          assertClose(got, attentionReference(q, k, v, { ...s, mask }), { atol: 1e-5, rtol: 1e-5 });
        } else assertEquals(got, first, `query block ${queryBlock}: the bytes of block 8`);
      }
    }
  },
);

testBackends("swiglu matches the reference, including large negative gates", async (backend) => {
  const gpu = await device(backend);
  const rng = seeded(4);
  const g = randn(rng, 5 * 36, 4), u = randn(rng, 5 * 36);
  g[0] = -200;
  g[1] = 90;
  const gb = buf(gpu, g);
  submitSteps(gpu, [
    swigluStep(gpu, { label: "s", gate: gb, up: buf(gpu, u), rows: 5, width: 36 }),
  ]);
  assertClose(await gpu.readF32(gb, g.length), swigluReference(g, u), { atol: 1e-5, rtol: 1e-5 });
});

testBackends("embedding gather over a sharded table", async (backend) => {
  const gpu = await device(backend);
  const rng = seeded(5);
  const V = 150, H = 24;
  const table = randn(rng, V * H);
  const t = createTensor(gpu, "embed", [V, H], { data: table });
  assert(t.shards.length >= 3, `expected ≥3 shards, got ${t.shards.length}`);
  const ids = Uint32Array.from({ length: 29 }, () => Math.floor(rng() * V));
  ids[0] = V - 1;
  const x = gpu.createBuffer("x", ids.length * H * 4, "activations");
  submitSteps(
    gpu,
    embeddingSteps(gpu, { label: "e", ids: buf(gpu, ids), table: t, x, rows: ids.length }),
  );
  const want = new Float64Array(ids.length * H);
  ids.forEach((id, r) => want.set(table.subarray(id * H, id * H + H), r * H));
  assertClose(await gpu.readF32(x, want.length), want, { atol: 0, rtol: 0 });
});

testBackends(
  "streamed log-likelihood over ragged vocab chunks equals the full log-softmax",
  async (backend) => {
    const gpu = await device(backend);
    const rng = seeded(6);
    const batch = 3, seqLen = 9, V = 103;
    const rows = batch * seqLen;
    const logits = randn(rng, rows * V, 3);
    const ids = Array.from(
      { length: batch },
      () => Array.from({ length: seqLen }, () => Math.floor(rng() * V)),
    );
    const mask = ids.map((r, b) => r.map((_, t) => (t < seqLen - 2 * b ? 1 : 0)));
    const target = scoredTargets(ids, mask, seqLen);
    assert(target[seqLen - 1] === NO_TARGET, "the last position has no target");
    // A sentinel in every row's state: rows with no target must keep it (they are skipped).
    const targetB = buf(gpu, target),
      state = buf(gpu, new Float32Array(rows * 3).fill(7)),
      r = gpu.createBuffer("r", 16, "activations");
    const steps = [];
    const chunk = 40; // 40 + 40 + 23: the last chunk is ragged
    for (let c0 = 0; c0 < V; c0 += chunk) {
      const n = Math.min(chunk, V - c0);
      const part = new Float32Array(rows * n);
      for (let i = 0; i < rows; i++) part.set(logits.subarray(i * V + c0, i * V + c0 + n), i * n);
      steps.push(logsumexpChunkStep(gpu, {
        label: "lse",
        logits: buf(gpu, part),
        target: targetB,
        state,
        rows,
        width: n,
        start: c0,
        first: c0 === 0,
      }));
    }
    steps.push(logLikelihoodStep(gpu, { label: "ll", target: targetB, state, r, batch, seqLen }));
    submitSteps(gpu, steps);
    const want = logLikelihoodReference(logits, target, { batch, seqLen, vocab: V });
    assertClose(await gpu.readF32(r, batch), want, { atol: 1e-5, rtol: 1e-5 });
    const after = await gpu.readF32(state, rows * 3);
    target.forEach((t, row) => {
      const kept = [0, 1, 2].every((i) => after[3 * row + i] === 7);
      assertEquals(kept, t === NO_TARGET, `row ${row}: state kept only where there is no target`);
    });
  },
);
