/**
 * Philox4x32-10 and the Gaussian noise: known answers (TypeScript and WGSL), the TypeScript twin
 * against the GPU word for word, and the statistics of the normals.
 */
import { assert, assertEquals } from "./helpers.ts";
import { acquireGpu, type Gpu } from "../kernels/runtime.ts";
import { dispatch, submitSteps } from "../kernels/program.ts";
import {
  boxMuller,
  gaussianNoise,
  mulhi32,
  noiseWgsl,
  noiseWords,
  philox4x32_10,
  seedKey,
} from "../kernels/philox.ts";

const KAT = JSON.parse(
  Deno.readTextFileSync(new URL("./fixtures/philox4x32_10_kat.json", import.meta.url)),
) as { cases: { counter: string[]; key: string[]; expected: string[] }[] };

const hex = (words: string[]) => words.map((h) => parseInt(h, 16));

/** Runs noise_probe.wgsl: `blocks` Philox blocks from `counter` upward, words and normals. */
async function probe(
  gpu: Gpu,
  counter: number[],
  key: number[],
  blocks: number,
): Promise<{ words: Uint32Array; normals: Float32Array }> {
  const source = Deno.readTextFileSync(new URL("./noise_probe.wgsl", import.meta.url));

  const params = gpu.createBuffer("probe", 32, "activations");
  gpu.write(params, new Uint32Array([...counter, ...key, blocks, 0]));
  const words = gpu.createBuffer("words", blocks * 16, "activations");
  const normals = gpu.createBuffer("normals", blocks * 16, "activations");
  const groups = Math.ceil(blocks / 64);
  const x = Math.min(groups, 65535);
  const step = dispatch(gpu, {
    label: "noise_probe",
    kernel: "noise_probe",
    consts: {},
    bindings: [params, words, normals],
    workgroups: [x, Math.ceil(groups / x), 1],
    wgsl: { label: "noise_probe", code: () => noiseWgsl + source },
  });
  await gpu.scoped("noise_probe", async () => {
    submitSteps(gpu, [step]);
    await gpu.checkPipelines();
  });
  const [w, z] = await gpu.readMany([
    { buffer: words, bytes: blocks * 16 },
    { buffer: normals, bytes: blocks * 16 },
  ]);
  for (const b of [params, words, normals]) gpu.destroyBuffer(b);
  return { words: new Uint32Array(w), normals: new Float32Array(z) };
}

Deno.test("mulhi32 is the exact high word of a 64-bit product", () => {
  const cases = [[0, 0], [0xFFFFFFFF, 0xFFFFFFFF], [0xD2511F53, 0x12345678], [0xCD9E8D57, 1], [
    0x80000000,
    0x80000000,
  ]];
  for (const [a, b] of cases) {
    assertEquals(mulhi32(a, b), Number((BigInt(a) * BigInt(b)) >> 32n));
  }
});

Deno.test("Philox4x32-10 TypeScript matches the Random123 known answers", () => {
  for (const c of KAT.cases) {
    assertEquals([...philox4x32_10(hex(c.counter), hex(c.key))], hex(c.expected));
  }
});

Deno.test("seedKey splits a u64 seed into (lo32, hi32)", () => {
  assertEquals(seedKey(1234), [1234, 0]);
  assertEquals(seedKey(2 ** 40 + 7), [7, 256]);
  assertEquals(seedKey(0xFEDCBA9876543210n), [0x76543210, 0xFEDCBA98]);
});

Deno.test("gpu: WGSL Philox matches the known answers, and the twin's stream word for word", async () => {
  const gpu = await acquireGpu();
  try {
    for (const c of KAT.cases) {
      const { words } = await probe(gpu, hex(c.counter), hex(c.key), 1);
      assertEquals([...words], hex(c.expected));
    }

    // A stream of 65536 normals: seed above 2^32 so the key's high word matters.
    const seed = 2 ** 33 + 987654321, iteration = 17, member = 5, tensor = 42, count = 1 << 16;
    const { words, normals } = await probe(
      gpu,
      [0, tensor, member, iteration],
      seedKey(seed),
      count / 4,
    );
    assertEquals(words, noiseWords(seed, iteration, member, tensor, count));
    const twin = gaussianNoise(seed, iteration, member, tensor, count);
    let worst = 0;
    for (let i = 0; i < count; i++) {
      worst = Math.max(worst, Math.abs(twin[i] - normals[i]) / Math.max(1, Math.abs(twin[i])));
    }
    // f64-then-round log/sin/cos against lavapipe's f32 ones: a few ulp (see philox.ts).
    assert(worst <= 1e-6, `twin vs GPU normals differ by ${worst} (relative to max(1,|z|))`);
  } finally {
    gpu.destroy();
  }
});

Deno.test("Box–Muller never takes log(0) and stays within sqrt(2·24·ln 2)", () => {
  const [a, b] = boxMuller(0, 0); // u = 2^-24, the smallest radius word
  const bound = Math.sqrt(2 * 24 * Math.LN2);
  assert(Number.isFinite(a) && Number.isFinite(b));
  assert(Math.hypot(a, b) <= bound + 1e-5);
  const [c, d] = boxMuller(0xFFFFFFFF, 0x80000000); // u = 1: radius 0
  assertEquals([c, d], [0, 0]);
});

/** Mean, variance, skewness and excess kurtosis of a sample, in f64. */
function moments(
  x: ArrayLike<number>,
): { mean: number; variance: number; skew: number; kurt: number } {
  const n = x.length;
  let s = 0;
  for (let i = 0; i < n; i++) s += x[i];
  const mean = s / n;
  let m2 = 0, m3 = 0, m4 = 0;
  for (let i = 0; i < n; i++) {
    const d = x[i] - mean;
    m2 += d * d;
    m3 += d * d * d;
    m4 += d * d * d * d;
  }
  m2 /= n;
  m3 /= n;
  m4 /= n;
  return { mean, variance: m2, skew: m3 / m2 ** 1.5, kurt: m4 / (m2 * m2) - 3 };
}

function correlation(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const n = Math.min(a.length, b.length);
  let sa = 0, sb = 0, sab = 0, saa = 0, sbb = 0;
  for (let i = 0; i < n; i++) {
    sa += a[i];
    sb += b[i];
    sab += a[i] * b[i];
    saa += a[i] * a[i];
    sbb += b[i] * b[i];
  }
  const cov = sab / n - (sa / n) * (sb / n);
  return cov / Math.sqrt((saa / n - (sa / n) ** 2) * (sbb / n - (sb / n) ** 2));
}

/** Standard normal CDF via erfc (Numerical Recipes erfcc, |error| < 1.2e-7). */
function normalCdf(z: number): number {
  const x = Math.abs(z) / Math.SQRT2;
  const t = 1 / (1 + 0.5 * x);
  const erfc = t * Math.exp(
    -x * x - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
                  t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
                                  t * (-0.82215223 + t * 0.17087277)))))))),
  );
  return z >= 0 ? 1 - erfc / 2 : erfc / 2;
}

Deno.test("gpu: noise statistics over 2^20 normals: moments, χ², decorrelated streams", async () => {
  const gpu = await acquireGpu();
  try {
    const n = 1 << 20, seed = 20250101;
    const stream = async (iteration: number, member: number, tensor: number) =>
      (await probe(gpu, [0, tensor, member, iteration], seedKey(seed), n / 4)).normals;
    const z = await stream(3, 0, 7);

    // Tolerances are 5 standard errors of each estimator for n = 2^20 normals.
    const se = 1 / Math.sqrt(n);
    const m = moments(z);
    assert(Math.abs(m.mean) < 5 * se, `mean ${m.mean}`);
    assert(Math.abs(m.variance - 1) < 5 * Math.SQRT2 * se, `variance ${m.variance}`);
    assert(Math.abs(m.skew) < 5 * Math.sqrt(6) * se, `skewness ${m.skew}`);
    assert(Math.abs(m.kurt) < 5 * Math.sqrt(24) * se, `excess kurtosis ${m.kurt}`);

    // χ² over 100 equiprobable bins of Φ(z): 99 degrees of freedom, mean 99, sd 14.
    const bins = new Float64Array(100);
    for (let i = 0; i < n; i++) bins[Math.min(99, Math.floor(normalCdf(z[i]) * 100))]++;
    const chi2 = bins.reduce((s, o) => s + (o - n / 100) ** 2 / (n / 100), 0);
    assert(chi2 < 99 + 5 * 14, `χ² ${chi2} over 100 bins`);

    // Neighbours within a stream (same Box–Muller pair, same Philox block, next block).
    for (const lag of [1, 2, 4]) {
      const r = correlation(z.subarray(0, n - lag), z.subarray(lag));
      assert(Math.abs(r) < 5 * se, `lag-${lag} correlation ${r}`);
    }
    // Streams one counter word apart: member, tensor, iteration.
    for (
      const [label, other] of [
        ["member", await stream(3, 1, 7)],
        ["tensor", await stream(3, 0, 8)],
        ["iteration", await stream(4, 0, 7)],
      ] as const
    ) {
      const r = correlation(z, other);
      assert(Math.abs(r) < 5 * se, `${label} correlation ${r}`);
    }
    // A different seed (key) gives an unrelated stream too.
    const otherSeed = (await probe(gpu, [0, 7, 0, 3], seedKey(seed + 1), n / 4)).normals;
    assert(Math.abs(correlation(z, otherSeed)) < 5 * se);
  } finally {
    gpu.destroy();
  }
});
