/**
 * Low-rank perturbations (EGGROLL: Sarkar et al. 2025, "Evolution Strategies at the Hyperscale"):
 * a member's perturbation of a matrix W (O, I) is σ·A_j·B_jᵀ/√r with A_j (O, r) and B_j (I, r)
 * standard normal, so a population runs over the shared θ as
 *   x·(W + σ·A·Bᵀ/√r)ᵀ = x·Wᵀ + ((x·B)·Aᵀ)·σ/√r
 * and no perturbed copy of W exists. The update is θ += Σ_i d_i·m_α·A_i·B_iᵀ/√r.
 *
 * Legend: O = out features, I = in features, r = rank, r4 = r rounded up to 4 (matmuls read vec4
 * along K; the pad columns of every factor are zero), R = token rows, n = distinct noises.
 *
 * Counter layout. A and B get their own Philox counter words, so they never reuse the full-rank
 * noise's counters (kernels/philox.ts: counter = (block, tensor, member, iteration), tensor ids
 * are 0..T−1): for tensor id t,
 *   A: tensor word 0x80000000 + 2t,  element (o, k) = o·r + k
 *   B: tensor word 0x80000000 + 2t + 1,  element (i, k) = i·r + k
 * with the member (noise index), iteration and seed words as for full-rank noise.
 *
 * Kernels and shapes:
 *   lowrank_factors (lowrank_factors.wgsl): rows of A or B of one or n noises, scaled, in any
 *     strided layout: a member's a = s·A (O, r4) and bᵀ = Bᵀ (r4, I), the update's Ã = d·m·A
 *     (rows, n·r4) and B̃ = B (I, n·r4). s = ±σ_t·m_σ/√r.
 *   project (matmul): u (R, r4) = x (R, I) · bᵀᵀ, i.e. x·B.
 *   apply (matmul, accumulate): out (R, O) += u · aᵀ, i.e. σ/√r·(x·B)·Aᵀ.
 *   lowrank_embed (lowrank_embed.wgsl): x (R, H) += a[ids]·bᵀ, the gather's correction.
 *   update (matmul, accumulate): θ shard (rows, I) += Ã · B̃ᵀ = Σ_i d_i·m_α/√r·A_i·B_iᵀ.
 *
 * Tests: tests/lowrank_test.ts (factors against the TypeScript twin, one iteration against float64), tests/native_test.ts (CPU).
 *
 * @module
 */
import {
  alignUp,
  type Binding,
  bindingRange,
  type Device,
  type DeviceBuffer,
  DeviceError,
} from "./device.ts";
import { dispatch, launch, type Step, wgslConsts, wgslSource } from "./program.ts";
import { matmulStep } from "./matmul.ts";
import { gaussianNoise, noiseWgsl, type Seed } from "./philox.ts";
import { FACTOR, PERTURB, recordBytes, UPDATE, wgslStruct, writeRecord } from "./records.ts";

/** First counter word of the low-rank factors; full-rank tensor ids stay below it. */
export const LOWRANK_COUNTER_BASE = 0x80000000;

/** Invocations per workgroup, as the other elementwise kernels. */
const WG = 64;

/** Philox counter words of A and B of tensor id `tensorId` (see the module doc). */
export function lowRankCounterIds(tensorId: number): { a: number; b: number } {
  if (!Number.isInteger(tensorId) || tensorId < 0 || tensorId >= 2 ** 30) {
    throw new RangeError(`tensor id ${tensorId} must be an integer in [0, 2^30)`);
  }
  return { a: LOWRANK_COUNTER_BASE + 2 * tensorId, b: LOWRANK_COUNTER_BASE + 2 * tensorId + 1 };
}

/** The rank rounded up to a multiple of 4 (factor columns as stored). */
export function paddedRank(rank: number): number {
  return Math.ceil(rank / 4) * 4;
}

/**
 * The TypeScript twin: A (O·r, row-major (O, r)) and B (I·r, row-major (I, r)) of one noise,
 * unscaled — the same counters the WGSL reads (words bit-identical, normals within philox.ts's
 * tolerance).
 */
export function lowRankFactors(
  seed: Seed,
  o: {
    iteration: number;
    member: number;
    tensorId: number;
    rows: number;
    cols: number;
    rank: number;
  },
): { a: Float32Array; b: Float32Array } {
  const ids = lowRankCounterIds(o.tensorId);
  return {
    a: gaussianNoise(seed, o.iteration, o.member, ids.a, o.rows * o.rank),
    b: gaussianNoise(seed, o.iteration, o.member, ids.b, o.cols * o.rank),
  };
}

/** Float64 A·Bᵀ/√r (O, I) of factors from {@link lowRankFactors}. */
export function lowRankProduct(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  o: { rows: number; cols: number; rank: number },
): Float64Array {
  const { rows, cols, rank } = o;
  const out = new Float64Array(rows * cols);
  const s = 1 / Math.sqrt(rank);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      let v = 0;
      for (let k = 0; k < rank; k++) v += a[r * rank + k] * b[c * rank + k];
      out[r * cols + c] = v * s;
    }
  }
  return out;
}

/**
 * A member's low-rank delta of one matrix, bound beside θ's tensor: the forward adds
 * u = x·B then out += u·aᵀ after the matmul with W.
 */
export interface LowRankDelta {
  rank: number;
  /** r rounded up to 4. */
  r4: number;
  /** (O, r4): ±σ_t·m_σ/√r·A_j, pad columns zero. */
  a: DeviceBuffer;
  /** (r4, I): B_jᵀ, pad rows zero. */
  bt: DeviceBuffer;
  /** (R, r4) workspace for u = x·B, shared by every matrix (used one at a time). */
  u: DeviceBuffer;
  /**
   * Population batching: `count` members at once; member z's a and bt start z·aStride and
   * z·bStride elements in, and its m rows of x and u (m: the steps' rows per member) follow
   * member z − 1's. Absent: one member.
   */
  members?: { count: number; aStride: number; bStride: number };
}

/**
 * Tiles of the two thin matmuls. The default selection picks 32×16 for an apply of (1024, 4, 384),
 * whose 512 unrolled accumulators take seconds to compile on lavapipe for every new sequence
 * length; with K or N of 4 there is little reuse to gain, and these small tiles measured as fast
 * or faster there (GPU timestamps on llvmpipe, 2 busy cores: a project of (1024, 128, 4) 0.22 ms
 * with 8×4 against 0.41 ms with 32×4; an apply of (1024, 4, 384) 1.6 ms with 4×8 against 2.1 ms
 * with 32×16).
 */
const PROJECT_TILE = { tm: 8, tn: 4 }, APPLY_TILE = { tm: 4, tn: 8 };

/** u (m, r4) = x (m, k) · B: the projection onto the member's B. */
export function lowRankProjectStep(
  device: Device,
  o: { label: string; x: DeviceBuffer; m: number; k: number; delta: LowRankDelta },
): Step {
  return matmulStep(device, {
    label: `${o.label}.lowrank_project`,
    x: o.x,
    m: o.m,
    members: projectMembers(o.delta, o.m, o.k),
    k: o.k,
    w: o.delta.bt,
    n: o.delta.r4,
    out: o.delta.u,
    tile: PROJECT_TILE,
  });
}

/** The project matmul's member strides: x and u per member's rows, B per member's slot. */
function projectMembers(delta: LowRankDelta, m: number, k: number) {
  const mb = delta.members;
  if (!mb || mb.count === 1) return undefined;
  return { count: mb.count, x: m * k, w: mb.bStride, out: m * delta.r4 };
}

/**
 * out[:, outColOffset + c] += u · a[wRowOffset + c]ᵀ for c < n: the member's σ/√r·(x·B)·Aᵀ on
 * columns [wRowOffset, wRowOffset + n) of W's output (a vocab chunk of the LM head).
 */
export function lowRankApplyStep(
  device: Device,
  o: {
    label: string;
    m: number;
    n: number;
    delta: LowRankDelta;
    out: DeviceBuffer;
    wRowOffset?: number;
    outStride?: number;
    outColOffset?: number;
  },
): Step {
  return matmulStep(device, {
    label: `${o.label}.lowrank_apply`,
    x: o.delta.u,
    m: o.m,
    k: o.delta.r4,
    w: o.delta.a,
    wRowOffset: o.wRowOffset,
    n: o.n,
    out: o.out,
    outStride: o.outStride,
    outColOffset: o.outColOffset,
    accumulate: true,
    members: o.delta.members && o.delta.members.count > 1
      ? {
        count: o.delta.members.count,
        x: o.m * o.delta.r4,
        w: o.delta.members.aStride,
        out: o.m * (o.outStride ?? o.n),
      }
      : undefined,
    tile: APPLY_TILE,
  });
}

/** out (m, O) += σ/√r·(x·B)·Aᵀ: the correction after a linear layer x·Wᵀ. */
export function lowRankLinearSteps(
  device: Device,
  o: {
    label: string;
    x: DeviceBuffer;
    m: number;
    k: number;
    n: number;
    delta: LowRankDelta;
    out: DeviceBuffer;
  },
): Step[] {
  return [
    lowRankProjectStep(device, o),
    lowRankApplyStep(device, { label: o.label, m: o.m, n: o.n, delta: o.delta, out: o.out }),
  ];
}

/** x (rows, H) += a[ids]·bᵀ: the embedding gather's correction. */
export function lowRankEmbedStep(
  device: Device,
  o: {
    label: string;
    ids: DeviceBuffer;
    delta: LowRankDelta;
    x: DeviceBuffer;
    rows: number;
    hidden: number;
  },
): Step {
  if (o.hidden % 4 !== 0) throw new Error(`${o.label}: hidden ${o.hidden} must be a multiple of 4`);
  return launch(device, {
    label: `${o.label}.lowrank`,
    kernel: "lowrank_embed",
    consts: {
      R: o.rows,
      H: o.hidden,
      R4: o.delta.r4,
      RM: o.rows / (o.delta.members?.count ?? 1),
      A_MS: o.delta.members?.aStride ?? 0,
      B_MS4: (o.delta.members?.bStride ?? 0) / 4,
    },
    buffers: [o.ids, o.delta.a, o.delta.bt, o.x],
    invocations: o.rows * (o.hidden / 4),
  });
}

/** One lowrank_factors dispatch: which factor rows, in which layout, with which scale. */
export interface FactorRecord {
  /** Counter word ({@link lowRankCounterIds}). */
  tensor: number;
  row0: number;
  rows: number;
  rank: number;
  rowStride: number;
  noiseStride: number;
  kStride: number;
  /** Times the noise's scale (±σ_t of a member, d_i of the update). */
  scaled: boolean;
  multiplier: number;
  /**
   * The update's noises noise0 .. noise0 + span − 1, a group whose columns past the last noise
   * are written as zeros; default span 0: noise0 up to the last noise there is.
   */
  noise0?: number;
  span?: number;
}

const FACTOR_BYTES = recordBytes(FACTOR);

/** A table of factor records on the device, one binding-aligned record each. */
export interface FactorTable {
  buffer: DeviceBuffer;
  stride: number;
  records: FactorRecord[];
}

/** Writes `records` into one buffer at the adapter's binding-offset alignment. */
export function createFactorTable(
  device: Device,
  label: string,
  records: FactorRecord[],
): FactorTable {
  const stride = alignUp(FACTOR_BYTES, device.limits.minStorageBufferOffsetAlignment);
  const words = new Uint32Array((stride / 4) * Math.max(1, records.length));
  records.forEach((r, i) => {
    if (r.rank < 1 || r.rows < 1) throw new RangeError(`${label} record ${i}: empty factor`);
    try {
      writeRecord(FACTOR, words, (i * stride) / 4, {
        tensor: r.tensor,
        row0: r.row0,
        rows: r.rows,
        rank: r.rank,
        row_stride: r.rowStride,
        noise_stride: r.noiseStride,
        k_stride: r.kStride,
        scaled: r.scaled ? 1 : 0,
        multiplier: r.multiplier,
        noise0: r.noise0 ?? 0,
        span: r.span ?? 0,
      });
    } catch (e) {
      throw new RangeError(`${label} record ${i}: ${(e as Error).message}`);
    }
  });
  const buffer = device.createBuffer(label, words.byteLength, "es");
  device.write(buffer, words);
  return { buffer, stride, records };
}

/** The perturb-params record of one member (kernels/records.ts PERTURB): one noise. */
const MEMBER_PARAMS = wgslStruct(PERTURB) + `
@group(0) @binding(1) var<storage, read> params: Perturb;
fn noise_key() -> vec2u { return vec2u(params.seed_lo, params.seed_hi); }
fn noise_count() -> u32 { return 1u; }
fn noise_index(i: u32) -> u32 { return params.noise; }
fn noise_scale(i: u32) -> f32 { return params.scale; }
`;

/** The update params (kernels/records.ts UPDATE): n noises and their coefficients d_i. */
const UPDATE_PARAMS = wgslStruct(UPDATE) + `
@group(0) @binding(1) var<storage, read> params: Update;
fn noise_key() -> vec2u { return vec2u(params.seed_lo, params.seed_hi); }
fn noise_count() -> u32 { return params.count; }
fn noise_index(i: u32) -> u32 { return i; }
fn noise_scale(i: u32) -> f32 { return params.coeffs[i]; }
`;

const FACTORS_SOURCE = wgslStruct(FACTOR) +
  wgslSource(new URL("./lowrank_factors.wgsl", import.meta.url));

/**
 * One dispatch writing record `index` of `table` into `out`. `params` is a member's perturb
 * record (a byte range of the perturb-params buffer: mode "member") or the update params
 * (mode "update", up to `noises` noises; fewer at run time leave the rest unwritten).
 */
export function lowRankFactorStep(
  device: Device,
  o: {
    label: string;
    table: FactorTable;
    index: number;
    params: Binding;
    /** The buffer, or a byte range of it (a member's slot). */
    out: Binding;
    mode: "member" | "update";
    noises?: number;
  },
): Step {
  const r = o.table.records[o.index];
  const noises = o.mode === "member" ? 1 : Math.min(o.noises ?? 1, r.span ?? Infinity);
  const last = Math.max(
    (r.rows - 1) * r.rowStride + (noises - 1) * r.noiseStride + (r.rank - 1) * r.kStride + 1,
    0,
  );
  const outBytes = bindingRange(o.out).size;
  if (outBytes < last * 4) {
    throw new DeviceError(`${o.label}: out holds ${outBytes} bytes, the factor needs ${last * 4}`);
  }
  const start = r.row0 * r.rank, end = (r.row0 + r.rows) * r.rank;
  const blocks = Math.ceil(end / 4) - Math.floor(start / 4);
  const groups = Math.ceil((blocks * noises) / WG);
  const y = Math.ceil(groups / device.limits.maxComputeWorkgroupsPerDimension);
  return dispatch(device, {
    label: o.label,
    kernel: "lowrank_factors",
    variant: o.mode,
    consts: { WG },
    wgsl: {
      label: `lowrank_factors_${o.mode}`,
      code: () =>
        wgslConsts({ WG }) + noiseWgsl + (o.mode === "member" ? MEMBER_PARAMS : UPDATE_PARAMS) +
        FACTORS_SOURCE,
    },
    bindings: [
      { buffer: o.table.buffer, offset: o.index * o.table.stride, size: FACTOR_BYTES },
      o.params,
      o.out,
    ],
    workgroups: [Math.ceil(groups / y), y, 1],
  });
}
