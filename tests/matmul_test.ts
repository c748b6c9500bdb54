/**
 * The matmul kernels against the float64 reference, on fresh random inputs with ragged sizes
 * that are not multiples of any tile, on both backends: WebGPU (lavapipe here; every tile) and
 * the CPU device (the system BLAS, which takes no tile: each tile case is the same call there).
 */
import type { Backend, Device, DeviceBuffer } from "../kernels/device.ts";
import { acquireDevice } from "../kernels/backend.ts";
import { settled, testBackends } from "./helpers.ts";
import { submitSteps } from "../kernels/program.ts";
import { createTensor } from "../kernels/tensor.ts";
import {
  defaultMatmulSwigluTile,
  defaultMatmulTile,
  linearSteps,
  MATMUL_SWIGLU_TILES,
  MATMUL_TILES,
  matmulReference,
  matmulStep,
  matmulSwigluReference,
  matmulSwigluStep,
  type MatmulTile,
  swigluLinearSteps,
} from "../kernels/matmul.ts";

/** One device per backend for the whole file, made on first use. */
const devices = new Map<Backend, Promise<Device>>();
function device(backend: Backend): Promise<Device> {
  let d = devices.get(backend);
  if (!d) devices.set(backend, d = acquireDevice({ backend }));
  return d;
}

function random(n: number, seed: number): Float32Array {
  // A small LCG so a failure reproduces; values in [-1, 1).
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

function upload(g: Device, label: string, data: Float32Array): DeviceBuffer {
  const b = g.createBuffer(label, data.byteLength, "activations");
  g.write(b, data);
  return b;
}

/** f32 rounding grows like sqrt(k) for random-sign sums; compare relative to the magnitude. */
function assertClose(got: Float32Array, want: ArrayLike<number>, k: number, what: string) {
  if (got.length !== want.length) {
    throw new Error(`${what}: ${got.length} values, want ${want.length}`);
  }
  const tol = 1e-4 * Math.sqrt(k);
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[i] - want[i]);
    if (!(d <= tol * (1 + Math.abs(want[i])))) {
      throw new Error(`${what}: element ${i} is ${got[i]}, want ${want[i]} (|diff| ${d})`);
    }
  }
}

async function run(g: Device, steps: Parameters<typeof submitSteps>[1]) {
  await g.scoped("matmul test", async () => {
    submitSteps(g, steps);
    await settled(g);
  });
}

async function plainCase(
  gpu: Device,
  shape: { m: number; k: number; n: number },
  tile?: MatmulTile,
) {
  const { m, k, n } = shape;
  const xs = random(m * k, m * 7 + k), ws = random(n * k, n * 13 + k);
  const x = upload(gpu, "x", xs), w = upload(gpu, "w", ws);
  const out = gpu.createBuffer("out", m * n * 4, "activations");
  await run(gpu, [matmulStep(gpu, { label: "plain", x, m, k, w, n, out, tile })]);
  const got = await gpu.readF32(out, m * n);
  const t = tile ?? defaultMatmulTile(gpu, shape);
  assertClose(got, matmulReference(xs, ws, m, k, n), k, `${m}x${k}x${n} tile ${t.tm}x${t.tn}`);
  for (const b of [x, w, out]) gpu.destroyBuffer(b);
}

testBackends("every tile is exact on a ragged 37x20x53", async (backend) => {
  const gpu = await device(backend);
  for (const tile of MATMUL_TILES) await plainCase(gpu, { m: 37, k: 20, n: 53 }, tile);
});

testBackends("odd tiles (1x1, 3x5) and the default tile on assorted shapes", async (backend) => {
  const gpu = await device(backend);
  await plainCase(gpu, { m: 9, k: 12, n: 11 }, { tm: 1, tn: 1 });
  await plainCase(gpu, { m: 9, k: 12, n: 11 }, { tm: 3, tn: 5 });
  for (
    const s of [
      { m: 1, k: 4, n: 1 },
      { m: 1, k: 64, n: 300 },
      { m: 300, k: 8, n: 2 },
      { m: 130, k: 132, n: 70 },
      { m: 257, k: 36, n: 513 },
    ]
  ) await plainCase(gpu, s);
});

testBackends(
  "bias, accumulate, outStride, outColOffset, wRowOffset and biasOffset together",
  async (backend) => {
    const gpu = await device(backend);
    const m = 29, k = 28, n = 19, nTotal = 40, wRowOffset = 13;
    const outStride = 50, outColOffset = 7, biasOffset = 5;
    const xs = random(m * k, 1), ws = random(nTotal * k, 2), bs = random(biasOffset + n + 3, 3);
    const before = random(m * outStride, 4);
    const x = upload(gpu, "x", xs), w = upload(gpu, "w", ws), bias = upload(gpu, "b", bs);
    for (const tile of [{ tm: 4, tn: 4 }, { tm: 16, tn: 8 }, undefined]) {
      for (const accumulate of [false, true]) {
        const out = upload(gpu, "out", before);
        await run(gpu, [matmulStep(gpu, {
          label: "offsets",
          x,
          m,
          k,
          w,
          wRowOffset,
          n,
          bias,
          biasOffset,
          out,
          outStride,
          outColOffset,
          accumulate,
          tile,
        })]);
        const got = await gpu.readF32(out, m * outStride);
        const ref = matmulReference(
          xs,
          ws.subarray(wRowOffset * k, (wRowOffset + n) * k),
          m,
          k,
          n,
          bs.subarray(biasOffset, biasOffset + n),
        );
        // Columns outside [outColOffset, outColOffset + n) must keep their old values exactly.
        const want = Float64Array.from(before);
        for (let r = 0; r < m; r++) {
          for (let c = 0; c < n; c++) {
            const at = r * outStride + outColOffset + c;
            want[at] = ref[r * n + c] + (accumulate ? before[at] : 0);
          }
        }
        assertClose(got, want, k, `offsets tile ${JSON.stringify(tile)} accumulate ${accumulate}`);
        gpu.destroyBuffer(out);
      }
    }
    for (const b of [x, w, bias]) gpu.destroyBuffer(b);
  },
);

testBackends("a sharded W (and a sharded bias) through linearSteps", async (backend) => {
  for (
    const { k, shardBytes, n } of [{ k: 24, shardBytes: 1024, n: 53 }, {
      k: 8,
      shardBytes: 112,
      n: 50,
    }]
  ) {
    const g = await acquireDevice({ backend, shardBytes });
    const m = 21;
    const xs = random(m * k, 5),
      ws = random(n * k, 6),
      bs = random(n, 7),
      before = random(m * n, 8);
    const w = createTensor(g, "w", [n, k], { data: ws });
    const bias = createTensor(g, "b", [n], { data: bs });
    if (w.shards.length < 3) throw new Error(`W has ${w.shards.length} shards, the test wants ≥ 3`);
    const x = upload(g, "x", xs), out = upload(g, "out", before);
    const steps = linearSteps(g, { label: "lin", x, m, k, w, bias, out, accumulate: true });
    if (steps.length < w.shards.length) {
      throw new Error(`${steps.length} steps for ${w.shards.length} shards`);
    }
    await run(g, steps);
    const got = await g.readF32(out, m * n);
    const want = matmulReference(xs, ws, m, k, n, bs).map((v, i) => v + before[i]);
    assertClose(got, want, k, `sharded W (${w.shards.length} shards, bias ${bias.shards.length})`);
    g.destroy();
  }
});

testBackends("more than 65535 workgroups go on a 2-D grid", async (backend) => {
  const gpu = await device(backend);
  // Tile 1x1 gives 64 outputs per workgroup: 4096 × 1040 outputs need 66,560 workgroups.
  await plainCase(gpu, { m: 4096, k: 4, n: 1040 }, { tm: 1, tn: 1 });
});

testBackends(
  "fused SwiGLU: every tile on a ragged 37x20x53, with row offsets and outColOffset",
  async (backend) => {
    const gpu = await device(backend);
    const m = 37, k = 20, n = 53, gateRowOffset = 9, upRowOffset = 4;
    const outStride = 61, outColOffset = 5;
    const xs = random(m * k, 11),
      wgs = random((gateRowOffset + n + 2) * k, 12),
      wus = random((upRowOffset + n) * k, 13),
      before = random(m * outStride, 14);
    const x = upload(gpu, "x", xs), wGate = upload(gpu, "wg", wgs), wUp = upload(gpu, "wu", wus);
    const ref = matmulSwigluReference(
      xs,
      wgs.subarray(gateRowOffset * k, (gateRowOffset + n) * k),
      wus.subarray(upRowOffset * k, (upRowOffset + n) * k),
      m,
      k,
      n,
    );
    // Columns outside [outColOffset, outColOffset + n) must keep their old values exactly.
    const want = Float64Array.from(before);
    for (let r = 0; r < m; r++) {
      for (let c = 0; c < n; c++) want[r * outStride + outColOffset + c] = ref[r * n + c];
    }
    for (const tile of [...MATMUL_SWIGLU_TILES, { tm: 3, tn: 5 }, undefined]) {
      const out = upload(gpu, "out", before);
      await run(gpu, [matmulSwigluStep(gpu, {
        label: "fused",
        x,
        m,
        k,
        wGate,
        gateRowOffset,
        wUp,
        upRowOffset,
        n,
        out,
        outStride,
        outColOffset,
        tile,
      })]);
      const got = await gpu.readF32(out, m * outStride);
      const t = tile ?? defaultMatmulSwigluTile(gpu, { m, k, n });
      assertClose(got, want, k, `fused ${m}x${k}x${n} tile ${t.tm}x${t.tn}`);
      gpu.destroyBuffer(out);
    }
    for (const b of [x, wGate, wUp]) gpu.destroyBuffer(b);
  },
);

testBackends(
  "fused SwiGLU: default tile on assorted shapes, one weight buffer for gate and up",
  async (backend) => {
    const gpu = await device(backend);
    for (const { m, k, n } of [{ m: 1, k: 4, n: 1 }, { m: 130, k: 132, n: 70 }]) {
      // Gate rows 0..n and up rows n..2n of one [2n, k] buffer, as a concatenated gate_up_proj.
      const xs = random(m * k, m + k), ws = random(2 * n * k, n + k);
      const x = upload(gpu, "x", xs), w = upload(gpu, "w", ws);
      const out = gpu.createBuffer("out", m * n * 4, "activations");
      await run(gpu, [
        matmulSwigluStep(gpu, {
          label: "fused",
          x,
          m,
          k,
          wGate: w,
          wUp: w,
          upRowOffset: n,
          n,
          out,
        }),
      ]);
      const got = await gpu.readF32(out, m * n);
      const want = matmulSwigluReference(xs, ws.subarray(0, n * k), ws.subarray(n * k), m, k, n);
      assertClose(got, want, k, `fused ${m}x${k}x${n}`);
      for (const b of [x, w, out]) gpu.destroyBuffer(b);
    }
  },
);

testBackends(
  "fused SwiGLU through swigluLinearSteps, gate and up sharded at different rows",
  async (backend) => {
    // 112-byte shards hold 3 rows of k = 8, so the gate is cut every 3 rows; the up tensor is cut
    // by hand every 4, 7 then 13 rows, so most steps end at a boundary of only one of the two.
    const g = await acquireDevice({ backend, shardBytes: 112 });
    const m = 21, k = 8, n = 50;
    const xs = random(m * k, 21), wgs = random(n * k, 22), wus = random(n * k, 23);
    const gate = createTensor(g, "gate", [n, k], { data: wgs });
    const upShards = [];
    for (let rowStart = 0, i = 0; rowStart < n; i++) {
      const rows = Math.min([4, 7, 13][i % 3], n - rowStart);
      const buffer = upload(g, `up#${i}`, wus.subarray(rowStart * k, (rowStart + rows) * k));
      upShards.push({ buffer, rowStart, rows });
      rowStart += rows;
    }
    const up = { name: "up", shape: [n, k], rowSize: k, shards: upShards };
    if (gate.shards.length < 3) throw new Error(`gate has ${gate.shards.length} shards, want ≥ 3`);
    const x = upload(g, "x", xs), out = g.createBuffer("out", m * n * 4, "activations");
    const steps = swigluLinearSteps(g, {
      label: "mlp",
      x,
      m,
      k,
      gate,
      up,
      out,
      tile: { tm: 4, tn: 4 },
    });
    const cuts = new Set([...gate.shards, ...up.shards].map((s) => s.rowStart));
    if (steps.length !== cuts.size) {
      throw new Error(`${steps.length} steps for ${cuts.size} distinct shard starts`);
    }
    await run(g, steps);
    const got = await g.readF32(out, m * n);
    assertClose(got, matmulSwigluReference(xs, wgs, wus, m, k, n), k, "sharded gate and up");
    g.destroy();
  },
);

testBackends("k not a multiple of 4, and bad sizes, are clear errors", async (backend) => {
  const gpu = await device(backend);
  const b = gpu.createBuffer("any", 4096, "activations");
  const out = gpu.createBuffer("out", 4096, "activations");
  const expectError = (fn: () => unknown, text: string) => {
    try {
      fn();
    } catch (e) {
      if (!(e instanceof Error) || !e.message.includes(text)) {
        throw new Error(`wanted an error mentioning "${text}", got ${e}`);
      }
      return;
    }
    throw new Error(`wanted an error mentioning "${text}", got none`);
  };
  expectError(
    () => matmulStep(gpu, { label: "bad", x: b, m: 2, k: 6, w: b, n: 2, out }),
    "not a multiple of 4",
  );
  expectError(
    () => matmulStep(gpu, { label: "big", x: b, m: 64, k: 64, w: b, n: 2, out }),
    "x holds 4096 bytes",
  );
  expectError(
    () => matmulStep(gpu, { label: "cols", x: b, m: 2, k: 4, w: b, n: 8, out, outStride: 6 }),
    "do not fit a row",
  );
  expectError(
    () => matmulSwigluStep(gpu, { label: "bad", x: b, m: 2, k: 6, wGate: b, wUp: b, n: 2, out }),
    "k = 6 is not a multiple of 4",
  );
  expectError(
    () =>
      matmulSwigluStep(gpu, {
        label: "up",
        x: b,
        m: 2,
        k: 8,
        wGate: b,
        wUp: b,
        upRowOffset: 127,
        n: 2,
        out,
      }),
    "wUp holds 4096 bytes",
  );
  expectError(
    () =>
      matmulSwigluStep(gpu, { label: "alias", x: b, m: 2, k: 4, wGate: out, wUp: b, n: 2, out }),
    "out must not be the same buffer",
  );
  gpu.destroyBuffer(b);
  gpu.destroyBuffer(out);
});
