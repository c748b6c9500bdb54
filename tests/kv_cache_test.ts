// The decode kernels (kernels/kv_cache.ts) against their float64 references on both backends:
// q/k norm + RoPE at buffered positions (members with their own w, a position past the tables),
// the cache write (a padding row past the cache skipped), and attention over the cache (GQA, MQA
// and MHA, ragged sequences, several new tokens per sequence as a prefill chunk has them).
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
import { ropeTables } from "../kernels/qk_norm_rope.ts";
import {
  attentionCacheReference,
  attentionCacheStep,
  kvCacheWriteReference,
  kvCacheWriteStep,
  qkNormRopeAtReference,
  qkNormRopeAtStep,
} from "../kernels/kv_cache.ts";

const devices = new Map<Backend, Promise<Device>>();
function device(backend: Backend): Promise<Device> {
  let d = devices.get(backend);
  if (!d) devices.set(backend, d = acquireDevice({ backend }));
  return d;
}

function buf(d: Device, data: ArrayBufferView): DeviceBuffer {
  const b = d.createBuffer("t", data.byteLength, "activations");
  d.write(b, data);
  return b;
}

testBackends("qk norm + RoPE at buffered positions matches the reference", async (backend) => {
  const d = await device(backend);
  const rng = seeded(11);
  const theta = 10000;
  for (
    const c of [
      { sequences: 3, newTokens: 1, heads: 4, headDim: 32, positions: 40, members: 1 },
      { sequences: 5, newTokens: 3, heads: 2, headDim: 6, positions: 9, members: 1 },
      { sequences: 4, newTokens: 2, heads: 3, headDim: 8, positions: 12, members: 2 },
    ]
  ) {
    const rows = c.sequences * c.newTokens, D = c.headDim;
    // Positions anywhere in the tables, and one whose last token lies past them (clamped).
    const pos = Uint32Array.from(
      { length: c.sequences },
      (_, s) => s === 0 ? c.positions - 1 : Math.floor(rng() * (c.positions - c.newTokens)),
    );
    const x = randn(rng, rows * c.heads * D, 2);
    const w = randn(rng, c.members * D);
    const t = ropeTables({ seqLen: c.positions, headDim: D, theta });
    const xb = buf(d, x);
    submitSteps(d, [
      qkNormRopeAtStep(d, {
        label: "rope_at",
        x: xb,
        w: buf(d, w),
        cos: buf(d, t.cos),
        sin: buf(d, t.sin),
        pos: buf(d, pos),
        sequences: c.sequences,
        newTokens: c.newTokens,
        heads: c.heads,
        headDim: D,
        positions: c.positions,
        eps: 1e-6,
        members: { rows: rows / c.members, wStride: D },
      }),
    ]);
    await settled(d);
    const got = await d.readF32(xb, rows * c.heads * D);
    // Each member's rows against the reference with its own w.
    const per = rows / c.members;
    for (let m = 0; m < c.members; m++) {
      const seqs = c.sequences / c.members;
      const want = qkNormRopeAtReference(
        x.subarray(m * per * c.heads * D, (m + 1) * per * c.heads * D),
        w.subarray(m * D, (m + 1) * D),
        {
          sequences: seqs,
          newTokens: c.newTokens,
          pos: pos.subarray(m * seqs, (m + 1) * seqs),
          heads: c.heads,
          headDim: D,
          positions: c.positions,
          eps: 1e-6,
          theta,
        },
      );
      assertClose(got.subarray(m * per * c.heads * D, (m + 1) * per * c.heads * D), want, {
        atol: 2e-5,
        rtol: 2e-5,
      });
    }
  }
});

testBackends(
  "the cache write puts each row in its slot and skips slots past the cache",
  async (backend) => {
    const d = await device(backend);
    const rng = seeded(12);
    for (
      const c of [{ sequences: 3, newTokens: 1, slots: 7, kvHeads: 2, headDim: 6 }, {
        sequences: 2,
        newTokens: 4,
        slots: 5,
        kvHeads: 1,
        headDim: 4,
      }]
    ) {
      const width = c.kvHeads * c.headDim, rows = c.sequences * c.newTokens;
      const pos = Uint32Array.from({ length: c.sequences }, (_, s) => s === 1 ? c.slots - 2 : s);
      const k = randn(rng, rows * width), v = randn(rng, rows * width);
      const kc0 = randn(rng, c.sequences * c.slots * width);
      const vc0 = randn(rng, c.sequences * c.slots * width);
      const kc = buf(d, kc0), vc = buf(d, vc0);
      submitSteps(d, [
        kvCacheWriteStep(d, {
          label: "write",
          k: buf(d, k),
          v: buf(d, v),
          pos: buf(d, pos),
          kCache: kc,
          vCache: vc,
          sequences: c.sequences,
          newTokens: c.newTokens,
          slots: c.slots,
          kvHeads: c.kvHeads,
          headDim: c.headDim,
        }),
      ]);
      await settled(d);
      const o = { sequences: c.sequences, newTokens: c.newTokens, pos, slots: c.slots, width };
      const n = c.sequences * c.slots * width;
      assertEquals(
        Array.from(await d.readF32(kc, n)),
        Array.from(kvCacheWriteReference(kc0, k, o)),
      );
      assertEquals(
        Array.from(await d.readF32(vc, n)),
        Array.from(kvCacheWriteReference(vc0, v, o)),
      );
    }
  },
);

testBackends(
  "attention over the cache: GQA, MQA, MHA, ragged positions, prefill chunks",
  async (backend) => {
    const d = await device(backend);
    const rng = seeded(13);
    for (
      const c of [
        { sequences: 3, newTokens: 1, slots: 9, heads: 4, kvHeads: 2, headDim: 32 },
        { sequences: 2, newTokens: 5, slots: 11, heads: 3, kvHeads: 1, headDim: 12 },
        { sequences: 4, newTokens: 2, slots: 6, heads: 2, kvHeads: 2, headDim: 4 },
      ]
    ) {
      const rows = c.sequences * c.newTokens, D = c.headDim;
      // One sequence at the first slot, one whose queries run past the cache (clamped).
      const pos = Uint32Array.from(
        { length: c.sequences },
        (_, s) => s === 0 ? 0 : s === 1 ? c.slots - 1 : Math.floor(rng() * c.slots),
      );
      const q = randn(rng, rows * c.heads * D, 1.5);
      const kc = randn(rng, c.sequences * c.slots * c.kvHeads * D, 1.5);
      const vc = randn(rng, c.sequences * c.slots * c.kvHeads * D);
      const out = d.createBuffer("out", rows * c.heads * D * 4, "activations");
      submitSteps(d, [
        attentionCacheStep(d, {
          label: "attn",
          q: buf(d, q),
          kCache: buf(d, kc),
          vCache: buf(d, vc),
          pos: buf(d, pos),
          out,
          sequences: c.sequences,
          newTokens: c.newTokens,
          slots: c.slots,
          heads: c.heads,
          kvHeads: c.kvHeads,
          headDim: D,
        }),
      ]);
      await settled(d);
      const want = attentionCacheReference(q, kc, vc, { ...c, pos });
      const got = await d.readF32(out, rows * c.heads * D);
      assert(got.some((x) => x !== 0), "attention wrote nothing");
      assertClose(got, want, { atol: 2e-5, rtol: 2e-5 });
    }
  },
);
