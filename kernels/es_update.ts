/**
 * The two ES kernels that touch θ: `perturb` (θ' = θ + σ·m_g·ε_j into a scratch tensor) and
 * `es_update` (θ += m_g·Σ_i d_i ε_i, the noise regenerated on the GPU). EA4LLM §3; the noise and
 * its counter layout are kernels/philox.ts and kernels/noise.wgsl.
 *
 * Bindings and shapes (see the .wgsl files for the per-element view):
 *   perturb   (noise_perturb.wgsl)  0 shard table record, 1 perturb params record,
 *                                   2 θ shard (read), 3 out shard (write)
 *   es_update (es_update.wgsl)      0 shard table record, 1 update params (header + d_i),
 *                                   2 θ shard (read-write) [, 3 injected ε, test mode only]
 * One step per shard. Kernels address elements as u32, so a tensor has fewer than 2^32 of them.
 *
 * Nothing that changes per member or per iteration is compiled in: one pipeline serves all
 * tensors, members and iterations, and the CPU only writes small buffers with
 * queue.writeBuffer, which is ordered with submits and needs no round trip.
 *
 * - Shard table ({@link createShardTable}): one record per shard of a tensor (start element
 *   rowStart·rowSize, count, tensor id, numel, group multiplier m_g), written once at build time.
 * - Perturb params: an array of records at {@link paramStride} bytes (32, rounded up to the
 *   adapter's minStorageBufferOffsetAlignment), one per member slot. {@link perturbSteps} binds
 *   record `paramIndex`. Build one step list per slot (typically slot = member j, with
 *   record j = {member: noiseMember(j).index, scale: noiseMember(j).sign·σ_t}); then a whole
 *   iteration's population, or several iterations' (slots = N·iterations), runs from one
 *   writeBuffer and one submit. A buffer of maxBufferSize holds tens of millions of slots; the
 *   real limit is how many steps one wants to encode. Reusing one slot also works across
 *   submits: write, submit, write, submit, still without waiting.
 * - Update params: words [seed lo, seed hi, iteration, n, d_0 … d_{n−1} as f32], one buffer per
 *   update ({@link encodeUpdateParams}). d_i is per noise index: pipeline/es.ts
 *   noiseCoefficients folds antithetic members (d_i = c_i − c_{i+K}), so the kernel regenerates
 *   K noises, not 2K. m_g is not in d_i: the shard table applies it per tensor.
 *
 * Tests: tests/es_update_gpu_test.ts (the es_update.json fixture, perturb exactness), tests/bf16_test.ts, tests/native_test.ts (CPU).
 *
 * @module
 */
import { alignUp, type Device, type DeviceBuffer, DeviceError, type WgslSource } from "./device.ts";
import { type DeviceTensor, numel } from "./tensor.ts";
import { dispatch, type Step, wgslConsts, wgslSource } from "./program.ts";
import { noiseWgsl, type Seed, seedKey } from "./philox.ts";
import {
  PERTURB,
  recordBytes,
  SHARD,
  UPDATE,
  wgslOffsets,
  wgslStruct,
  writeRecord,
} from "./records.ts";

/** Invocations per workgroup: lavapipe's subgroup is 8, and 64 matched the other elementwise kernels. */
const WG = 64;
/** Bytes a perturb-params or shard-table slot takes before alignment padding. */
const RECORD_BYTES = Math.max(recordBytes(SHARD), recordBytes(PERTURB));

const SHARD_STRUCT = wgslStruct(SHARD);
const PERTURB_SOURCE = SHARD_STRUCT + wgslOffsets(PERTURB) +
  wgslSource(new URL("./noise_perturb.wgsl", import.meta.url));
const UPDATE_SOURCE = SHARD_STRUCT + wgslStruct(UPDATE) +
  wgslSource(new URL("./es_update.wgsl", import.meta.url));

/** perturb's θ binding and reader for f32 storage. */
const THETA_F32 = `
@group(0) @binding(2) var<storage, read> theta: array<f32>;
fn theta_at(i: u32) -> f32 {
  return theta[i];
}
`;

/** perturb's θ binding and reader for bf16 storage: element 2k in the low half of word k. */
const THETA_BF16 = `
@group(0) @binding(2) var<storage, read> theta: array<u32>;
fn theta_at(i: u32) -> f32 {
  let w = theta[i >> 1u];
  return bitcast<f32>(select(w << 16u, w & 0xFFFF0000u, (i & 1u) == 1u));
}
`;

/** es_update's θ binding and write-back for f32 storage: plain adds. */
const APPLY_F32 = `
@group(0) @binding(2) var<storage, read_write> theta: array<f32>;
fn apply(block: u32, acc: vec4f) {
  let end = shard.start + shard.count;
  for (var k = 0u; k < 4u; k++) {
    let e = block * 4u + k;
    if (e >= shard.start && e < end) {
      theta[e - shard.start] += acc[k];
    }
  }
}
`;

/**
 * The Philox member word of the stochastic-rounding bits: no noise index reaches it (a
 * population has fewer than 2^32 − 1 members), so rounding bits never reuse a noise's counter.
 */
export const ROUNDING_STREAM = 0xFFFFFFFF;

/**
 * es_update's θ binding and write-back for bf16 storage. Each element's new f32 value is rounded
 * to bf16 stochastically: add 16 random bits below the kept half, then truncate, so it rounds up
 * with probability equal to the dropped fraction and E[bf16(v)] = v. An ES step of 1e-5 on a
 * weight of 0.02 (a bf16 ulp there is 1.2e-4) is kept on average instead of always lost to
 * round-to-nearest. The bits are Philox of (block, tensor, ROUNDING_STREAM, iteration): the
 * same on every adapter and every rerun, so bf16 runs stay byte-identical and resumable. A value
 * that needs no rounding (a zero step) is unchanged. Shards start and end on even elements, so a
 * u32 word is never split.
 */
const APPLY_BF16 = `
@group(0) @binding(2) var<storage, read_write> theta: array<u32>;
fn round_bf16(v: f32, r: u32) -> u32 {
  let b = bitcast<u32>(v);
  if ((b & 0x7F800000u) == 0x7F800000u) {
    // inf stays inf; NaN stays a (quiet) NaN.
    return (b >> 16u) | select(0u, 0x40u, (b & 0x007FFFFFu) != 0u);
  }
  return (b + (r & 0xFFFFu)) >> 16u;
}
fn apply(block: u32, acc: vec4f) {
  let end = shard.start + shard.count;
  let key = vec2u(update.seed_lo, update.seed_hi);
  let r = philox4x32_10(vec4u(block, shard.tensor, ${ROUNDING_STREAM}u, update.iteration), key);
  for (var p = 0u; p < 2u; p++) {
    let e = block * 4u + 2u * p;
    if (e >= shard.start && e < end) {
      let i = (e - shard.start) >> 1u;
      let w = theta[i];
      let lo = bitcast<f32>(w << 16u) + acc[2u * p];
      let hi = bitcast<f32>(w & 0xFFFF0000u) + acc[2u * p + 1u];
      theta[i] = round_bf16(lo, r[2u * p]) | (round_bf16(hi, r[2u * p + 1u]) << 16u);
    }
  }
}
`;

/** The perturb kernel's source for θ's storage, and its constants. */
function perturbSource(
  device: Device,
  theta: DeviceTensor,
): { wgsl: WgslSource; consts: Record<string, number>; variant?: string } {
  const bf16 = theta.dtype === "bf16";
  const consts = { WG, PARAM_WORDS: paramStride(device) / 4 };
  return {
    wgsl: {
      label: bf16 ? "perturb_bf16" : "perturb",
      code: () => wgslConsts(consts) + noiseWgsl + (bf16 ? THETA_BF16 : THETA_F32) + PERTURB_SOURCE,
    },
    consts,
    variant: bf16 ? "bf16" : undefined,
  };
}

/** es_update's noise source in training: regenerate ε_i of this shard's tensor. */
const EPS_REGENERATED = `
fn eps4(i: u32, block: u32) -> vec4f {
  return noise4(vec2u(update.seed_lo, update.seed_hi), update.iteration, i, shard.tensor, block);
}
`;

/**
 * es_update's noise source in tests: ε_i read from a buffer shaped [n, numel] (row i is noise i
 * over the whole tensor), so known-answer fixtures can drive the same accumulation.
 */
const EPS_INJECTED = `
@group(0) @binding(3) var<storage, read> injected: array<f32>;
fn eps4(i: u32, block: u32) -> vec4f {
  var v = vec4f(0.0);
  for (var k = 0u; k < 4u; k++) {
    let e = block * 4u + k;
    if (e < shard.numel) {
      v[k] = injected[i * shard.numel + e];
    }
  }
  return v;
}
`;

/** Per-shard records of one tensor on the device. */
export interface ShardTable {
  buffer: DeviceBuffer;
  /** Bytes between records (a valid storage binding offset alignment). */
  stride: number;
  tensorId: number;
  multiplier: number;
  /** Shards the table describes, in the tensor's order. */
  shards: number;
}

/** Bytes between records of a shard table or a perturb-params buffer on this device. */
export function paramStride(device: Device): number {
  return alignUp(RECORD_BYTES, device.limits.minStorageBufferOffsetAlignment);
}

/**
 * Writes the shard table of `tensor`: record k = (rowStart·rowSize, rows·rowSize, tensorId,
 * numel, multiplier). `tensorId` is the Philox counter word that tells tensors' noise apart.
 */
export function createShardTable(
  device: Device,
  tensor: DeviceTensor,
  options: { tensorId: number; multiplier?: number },
): ShardTable {
  return writeShardTable(
    device,
    tensor,
    tensor.shards.map((s) => ({
      start: s.rowStart * tensor.rowSize,
      count: s.rows * tensor.rowSize,
    })),
    options,
  );
}

/** One record of a shard table, in elements (kernels/shard_record.wgsl). */
interface ShardRecord {
  start: number;
  count: number;
  src?: number;
  dst?: number;
  memberStride?: number;
}

/** Writes a table of `records` of `tensor` with its id, element count and group multiplier. */
function writeShardTable(
  device: Device,
  tensor: DeviceTensor,
  records: ShardRecord[],
  options: { tensorId: number; multiplier?: number },
  label = `${tensor.name}.shards`,
): ShardTable {
  const total = numel(tensor.shape);
  if (total >= 2 ** 32) throw new DeviceError(`tensor ${tensor.name}: ${total} elements ≥ 2^32`);
  checkU32("tensorId", options.tensorId);
  const stride = paramStride(device);
  const words = new Uint32Array((stride / 4) * Math.max(1, records.length));
  records.forEach((r, k) =>
    writeRecord(SHARD, words, (k * stride) / 4, {
      start: r.start,
      count: r.count,
      tensor: options.tensorId,
      numel: total,
      multiplier: options.multiplier ?? 1,
      src: r.src,
      dst: r.dst,
      member_stride: r.memberStride,
    })
  );
  const buffer = device.createBuffer(label, words.byteLength, "es");
  device.write(buffer, words);
  return {
    buffer,
    stride,
    tensorId: options.tensorId,
    multiplier: options.multiplier ?? 1,
    shards: records.length,
  };
}

/** One perturb-params record: which noise, and its signed scale. */
export interface PerturbRecord {
  seed: Seed;
  iteration: number;
  /** Noise index (pipeline/es.ts noiseMember(j).index). */
  member: number;
  /** noiseMember(j).sign · σ_t. */
  scale: number;
  /** The fitness slot the member's total accumulates into (its place j in the population). */
  slot?: number;
}

/** Packs perturb-params records at `stride` bytes, ready for one device.write. */
export function encodePerturbParams(
  records: readonly PerturbRecord[],
  stride: number,
): Uint32Array {
  const words = new Uint32Array((stride / 4) * Math.max(1, records.length));
  records.forEach((r, k) => {
    const [lo, hi] = seedKey(r.seed);
    checkU32("iteration", r.iteration);
    checkU32("member", r.member);
    writeRecord(PERTURB, words, (k * stride) / 4, {
      seed_lo: lo,
      seed_hi: hi,
      iteration: r.iteration,
      noise: r.member,
      scale: r.scale,
      slot: r.slot,
    });
  });
  return words;
}

/**
 * Packs update params: [seed lo, seed hi, iteration, n, d_0 … d_{n−1}] with d_i in f32 (d from
 * pipeline/es.ts noiseCoefficients(updateCoefficients(w, …), antithetic)).
 */
export function encodeUpdateParams(
  options: { seed: Seed; iteration: number; coefficients: ArrayLike<number> },
): Uint32Array {
  const n = options.coefficients.length;
  const words = new Uint32Array(UPDATE.words + n);
  const [lo, hi] = seedKey(options.seed);
  checkU32("iteration", options.iteration);
  writeRecord(UPDATE, words, 0, {
    seed_lo: lo,
    seed_hi: hi,
    iteration: options.iteration,
    count: n,
  });
  new Float32Array(words.buffer, UPDATE.words * 4, n).set(Array.from(options.coefficients));
  return words;
}

/** Steps over every shard of one tensor, plus the shard table they bind (caller frees it). */
export interface EsSteps {
  steps: Step[];
  table: ShardTable;
}

/** Options of {@link perturbSteps}. */
export interface PerturbOptions {
  /** The parameters, read only. */
  theta: DeviceTensor;
  /** Scratch tensor with θ's shape (sharded like it or not): receives θ + scale·m_g·ε. */
  out: DeviceTensor;
  /** Perturb-params buffer ({@link encodePerturbParams}). */
  params: DeviceBuffer;
  /** Record of `params` this step list reads (the member slot). */
  paramIndex: number;
  /** From {@link createPerturbTable}; made from tensorId/multiplier when absent (then returned). */
  table?: ShardTable;
  tensorId?: number;
  multiplier?: number;
  /**
   * Population batching: this many members at once, member z reading record paramIndex + z and
   * writing memberStride elements (the table's) after member z − 1. Default one.
   */
  members?: number;
  /** Elements between members' copies in out, for a table made here. */
  memberStride?: number;
}

/** A row range of a perturb: inside one shard of θ and one shard of out. */
interface PerturbPiece {
  thetaShard: number;
  outShard: number;
  rowStart: number;
  rows: number;
}

/**
 * θ's shards cut at out's shard boundaries: the shards themselves when both are sharded alike,
 * finer pieces when they are not (a bf16 θ holds twice the rows per shard of its f32 copy).
 */
function perturbPieces(theta: DeviceTensor, out: DeviceTensor): PerturbPiece[] {
  if (theta.rowSize !== out.rowSize || numel(theta.shape) !== numel(out.shape)) {
    throw new DeviceError(`perturb: ${out.name} does not have the shape of ${theta.name}`);
  }
  const pieces: PerturbPiece[] = [];
  theta.shards.forEach((ts, thetaShard) =>
    out.shards.forEach((os, outShard) => {
      const a = Math.max(ts.rowStart, os.rowStart);
      const b = Math.min(ts.rowStart + ts.rows, os.rowStart + os.rows);
      if (b > a) pieces.push({ thetaShard, outShard, rowStart: a, rows: b - a });
    })
  );
  return pieces;
}

/**
 * The table of a perturb from θ into `out`: one record per piece (see perturbPieces), with the
 * piece's offsets inside its θ and out shards. For tensors sharded alike it holds the same
 * records as {@link createShardTable}. Reuse it across members: pass it as `table`.
 */
export function createPerturbTable(
  device: Device,
  theta: DeviceTensor,
  out: DeviceTensor,
  options: { tensorId: number; multiplier?: number; memberStride?: number },
): ShardTable {
  const pieces = perturbPieces(theta, out);
  return writeShardTable(
    device,
    theta,
    pieces.map((p) => ({
      start: p.rowStart * theta.rowSize,
      count: p.rows * theta.rowSize,
      src: (p.rowStart - theta.shards[p.thetaShard].rowStart) * theta.rowSize,
      dst: (p.rowStart - out.shards[p.outShard].rowStart) * theta.rowSize,
      memberStride: options.memberStride,
    })),
    options,
  );
}

/**
 * Steps that write out = θ + scale·m_g·ε(seed, iteration, member, tensorId) for every shard of θ,
 * with (seed, iteration, member, scale) read from record `paramIndex` of `params` when the
 * steps run, so the same steps serve every iteration.
 */
export function perturbSteps(device: Device, options: PerturbOptions): EsSteps {
  const { theta, out } = options;
  const pieces = perturbPieces(theta, out);
  let table = options.table;
  if (!table) {
    if (options.tensorId === undefined) {
      throw new DeviceError(`${theta.name}: pass a perturb table or a tensorId`);
    }
    table = createPerturbTable(device, theta, out, {
      tensorId: options.tensorId,
      multiplier: options.multiplier,
      memberStride: options.memberStride,
    });
  }
  if (table.shards !== pieces.length) {
    throw new DeviceError(
      `perturb: the table has ${table.shards} records, ${theta.name} → ${out.name} needs ` +
        `${pieces.length}; make it with createPerturbTable`,
    );
  }
  const t = table, stride = paramStride(device), members = options.members ?? 1;
  const src = perturbSource(device, theta);
  const steps = pieces.map((p, k) =>
    dispatch(device, {
      label: `perturb.${theta.name}${pieces.length > 1 ? `#${k}` : ""}.slot${options.paramIndex}`,
      kernel: "perturb",
      ...src,
      stage: "perturb",
      role: "form tensor",
      bindings: [
        { buffer: t.buffer, offset: k * t.stride, size: RECORD_BYTES },
        {
          buffer: options.params,
          offset: options.paramIndex * stride,
          size: (members - 1) * stride + RECORD_BYTES,
        },
        theta.shards[p.thetaShard].buffer,
        out.shards[p.outShard].buffer,
      ],
      workgroups: grid(blocksOf(p.rowStart * theta.rowSize, p.rows * theta.rowSize), members),
    })
  );
  return { steps, table: t };
}

/** Options of {@link chunkPerturbSteps}. */
export interface ChunkPerturbOptions {
  /** The parameters, read only. */
  theta: DeviceTensor;
  /** Philox tensor id and group multiplier of θ (as in {@link createShardTable}). */
  tensorId: number;
  multiplier: number;
  /** Rows per chunk at most (≥ 1). A chunk never crosses a shard of θ. */
  chunkRows: number;
  /** Receives each chunk at element 0, in turn: at least chunkRows·rowSize f32. */
  out: DeviceBuffer;
  /** Perturb-params buffer and the record the steps read. */
  params: DeviceBuffer;
  paramIndex: number;
  /**
   * Population batching: `count` members at once, member z reading record paramIndex + z and
   * writing its chunk `stride` elements after member z − 1's. Default one member.
   */
  members?: { count: number; stride: number };
}

/** A chunk of rows of θ and the step that writes its perturbed copy to the chunk buffer. */
export interface PerturbChunk {
  rowStart: number;
  rows: number;
  step: Step;
}

/**
 * The perturbed copy of θ in row chunks, each written to the same buffer: the forward runs a
 * chunk's step right before it reads the chunk, so a member needs a chunk of scratch, not a copy
 * of θ. The noise of element e is the same as {@link perturbSteps} gives it (its counter is e in
 * the whole tensor), so the two are interchangeable bit for bit. Frees: the returned table.
 */
export function chunkPerturbSteps(
  device: Device,
  o: ChunkPerturbOptions,
): { chunks: PerturbChunk[]; table: ShardTable } {
  const { theta } = o;
  if (!(Number.isInteger(o.chunkRows) && o.chunkRows >= 1)) {
    throw new DeviceError(
      `perturb ${theta.name}: chunkRows ${o.chunkRows} must be a positive integer`,
    );
  }
  const count = o.members?.count ?? 1, memberStride = count > 1 ? o.members!.stride : 0;
  const need = ((count - 1) * memberStride + o.chunkRows * theta.rowSize) * 4;
  if (o.out.size < need) {
    throw new DeviceError(
      `perturb ${theta.name}: the chunk buffer holds ${o.out.size} bytes, needs ${need}`,
    );
  }
  const ranges: { shard: number; rowStart: number; rows: number }[] = [];
  theta.shards.forEach((s, k) => {
    for (let r = 0; r < s.rows; r += o.chunkRows) {
      ranges.push({ shard: k, rowStart: s.rowStart + r, rows: Math.min(o.chunkRows, s.rows - r) });
    }
  });
  const stride = paramStride(device);
  const table = writeShardTable(
    device,
    theta,
    ranges.map((c) => ({
      start: c.rowStart * theta.rowSize,
      count: c.rows * theta.rowSize,
      src: (c.rowStart - theta.shards[c.shard].rowStart) * theta.rowSize,
      memberStride,
    })),
    o,
    `${theta.name}.chunks`,
  );
  const buffer = table.buffer;
  const src = perturbSource(device, theta);
  const chunks = ranges.map((c, k) => ({
    rowStart: c.rowStart,
    rows: c.rows,
    step: dispatch(device, {
      label: `perturb.${theta.name}[${c.rowStart}:${c.rowStart + c.rows}]`,
      kernel: "perturb",
      ...src,
      stage: "perturb",
      role: "form chunk",
      bindings: [
        { buffer, offset: k * stride, size: RECORD_BYTES },
        {
          buffer: o.params,
          offset: o.paramIndex * stride,
          size: (count - 1) * stride + RECORD_BYTES,
        },
        theta.shards[c.shard].buffer,
        o.out,
      ],
      workgroups: grid(blocksOf(c.rowStart * theta.rowSize, c.rows * theta.rowSize), count),
    }),
  }));
  return { chunks, table };
}

/** Options of {@link esUpdateSteps}. */
export interface EsUpdateOptions {
  /** The parameters, updated in place. */
  theta: DeviceTensor;
  /** Update-params buffer ({@link encodeUpdateParams}): header and per-noise coefficients. */
  coeffs: DeviceBuffer;
  /** Shard table of θ; made from tensorId/multiplier when absent (then returned for reuse). */
  table?: ShardTable;
  tensorId?: number;
  multiplier?: number;
  /**
   * Test mode: read ε from this buffer, shaped [n, numel(θ)] f32, instead of regenerating it.
   * Same kernel body, a different `eps4` compiled in.
   */
  injectedNoise?: DeviceBuffer;
}

/**
 * Steps that apply θ += m_g·Σ_i d_i·ε_i to every shard of θ: one pass over θ, the noise
 * regenerated on the GPU (or injected in test mode), the sum kept in f32 before it touches θ.
 */
export function esUpdateSteps(device: Device, options: EsUpdateOptions): EsSteps {
  const { theta } = options;
  const table = options.table ?? tableFor(device, theta, options);
  const injected = options.injectedNoise !== undefined, bf16 = theta.dtype === "bf16";
  const variant = [injected ? "injected" : "", bf16 ? "bf16" : ""].filter(Boolean).join("_");
  const wgsl: WgslSource = {
    label: `es_update${injected ? "_injected" : ""}${bf16 ? "_bf16" : ""}`,
    code: () =>
      wgslConsts({ WG }) + noiseWgsl + (injected ? EPS_INJECTED : EPS_REGENERATED) +
      (bf16 ? APPLY_BF16 : APPLY_F32) + UPDATE_SOURCE,
  };
  const steps = theta.shards.map((s, k) =>
    dispatch(device, {
      label: `es_update.${theta.name}${theta.shards.length > 1 ? `#${k}` : ""}`,
      kernel: "es_update",
      ...(variant ? { variant } : {}),
      consts: { WG },
      wgsl,
      stage: "update",
      role: "apply",
      bindings: [
        { buffer: table.buffer, offset: k * table.stride, size: RECORD_BYTES },
        options.coeffs,
        s.buffer,
        ...(injected ? [options.injectedNoise!] : []),
      ],
      workgroups: grid(blocksOf(s.rowStart * theta.rowSize, s.rows * theta.rowSize)),
    })
  );
  return { steps, table };
}

/** Allocates an update-params buffer for up to `noises` coefficients (write it each update). */
export function createUpdateParams(
  device: Device,
  noises: number,
  label = "es_update.params",
): DeviceBuffer {
  return device.createBuffer(label, recordBytes(UPDATE) + 4 * Math.max(1, noises), "es");
}

function tableFor(
  device: Device,
  theta: DeviceTensor,
  options: { tensorId?: number; multiplier?: number },
): ShardTable {
  if (options.tensorId === undefined) {
    throw new DeviceError(`${theta.name}: pass a shard table or a tensorId`);
  }
  return createShardTable(device, theta, {
    tensorId: options.tensorId,
    multiplier: options.multiplier,
  });
}

/** Aligned 4-element blocks that touch elements [start, start + count). */
function blocksOf(start: number, count: number): number {
  if (count === 0) return 0;
  return Math.floor((start + count - 1) / 4) - Math.floor(start / 4) + 1;
}

/**
 * A 2-D grid of WG-wide workgroups covering `invocations` (the kernels linearise y·X + x), and
 * `members` deep in z (perturb's batched members).
 */
function grid(invocations: number, members = 1): [number, number, number] {
  const groups = Math.ceil(invocations / WG);
  if (groups === 0) return [0, 1, 1];
  // Balance the rows so the last one is nearly full: idle workgroups still cost dispatch time.
  const y = Math.ceil(groups / 65535);
  const x = Math.ceil(groups / y);
  return [x, y, members];
}

function checkU32(name: string, v: number): void {
  if (!Number.isInteger(v) || v < 0 || v > 0xFFFFFFFF) {
    throw new RangeError(`${name} ${v} must be a u32`);
  }
}
