/**
 * Where a member's perturbed weights live, one builder per mode behind one interface
 * ({@link ScratchMode}): what the forward reads for a group of members (kernels' WeightLookup,
 * model/forward.ts), the steps that form a group's whole tensors, the unperturbed view of θ, and
 * the update of θ.
 *
 * - {@link chunkScratch} ("chunks", the default): a matrix's rows are formed a chunk at a time
 *   into one of two chunk buffers (θ/32 each) right before the forward reads them; the vectors
 *   are formed whole. Memory ≈ 1.08·θ. Each element gets the same noise as a whole copy would.
 * - {@link copyScratch} ("copy"): a whole perturbed copy θ_j per member, formed once per member
 *   rather than once per micro-batch. Memory 2·θ.
 * - {@link lowRankScratch} (EGGROLL, kernels/lowrank.ts): matrices stay θ and the forward adds
 *   σ/√r·(x·B_j)·A_jᵀ after each; the vectors keep full-rank noise.
 *
 * θ in bf16 (`storage: bf16`) is read only through perturb kernels that widen it: the
 * unperturbed forward reads θ's matrices through the chunks at scale 0 and its vectors from
 * small f32 copies widened right before each read ({@link bf16ThetaView}).
 *
 * @module
 */
import { alignUp, type BufferPurpose, type Device, type DeviceBuffer } from "../kernels/device.ts";
import {
  createTensor,
  type DeviceTensor,
  dtypeBytes,
  type FilledTensor,
  numel,
} from "../kernels/tensor.ts";
import type { Step } from "../kernels/program.ts";
import {
  chunkPerturbSteps,
  createPerturbTable,
  createShardTable,
  esUpdateSteps,
  paramStride,
  perturbSteps,
} from "../kernels/es_update.ts";
import {
  createFactorTable,
  type FactorRecord,
  lowRankApplyStep,
  lowRankCounterIds,
  type LowRankDelta,
  lowRankEmbedStep,
  lowRankFactorStep,
  lowRankLinearSteps,
  lowRankProjectStep,
  paddedRank,
} from "../kernels/lowrank.ts";
import { matmulStep } from "../kernels/matmul.ts";
import { swigluStep } from "../kernels/swiglu.ts";
import type { Qwen3Config } from "../model/config.ts";
import { type TensorLookup, tensorReads, type WeightLookup } from "../model/forward.ts";
import { noiseCount } from "./es.ts";
import { PERTURB, recordBytes } from "../kernels/records.ts";
import { UserError } from "../errors.ts";

/**
 * In "chunks" scratch mode, a chunk of a matrix is at most 1/CHUNK_FRACTION of θ's bytes (and at
 * least {@link MIN_CHUNK_BYTES}, and at least one row). Two chunk buffers exist (the gate and up
 * projections are read together), so the scratch is about 2/32 of θ.
 */
export const CHUNK_FRACTION = 32;
/** The smallest chunk budget, so a small model is not cut into slivers of dispatches. */
export const MIN_CHUNK_BYTES = 16 * 1024;

/** One way of holding a member's perturbed weights (see the module doc). */
export interface ScratchMode {
  /** How the unperturbed forward reads θ (the held-out loss, the shared prefix). */
  readonly theta: WeightLookup;
  /** How the forward of a group of `count` members reads their weights. */
  members(count: number): WeightLookup;
  /**
   * The steps that form a group of `count` members' whole tensors before its forwards, each
   * member z reading record z of the current-members buffer.
   */
  perturb(count: number): Step[];
  /** θ += Σ_i d_i·m_α·ε_i: one pass over θ, the noise regenerated. */
  readonly update: Step[];
  /** The member's scratch tensors formed whole (for destroying them with the engine). */
  readonly tensors: DeviceTensor[];
}

/** What every scratch mode builds from. */
export interface ScratchContext {
  device: Device;
  config: Qwen3Config;
  /** θ's tensor names in HF order: a tensor's index is its Philox counter word. */
  names: readonly string[];
  theta: Map<string, DeviceTensor>;
  population: number;
  antithetic: boolean;
  /** Token rows of one micro-batch (microBatch·maxLen). */
  rows: number;
  /** Members evaluated at once. */
  memberBatch: number;
  multipliers: (tensor: string) => { sigma: number; alpha: number };
  /** The group's records (copied in before each group runs), and an all-zero record (scale 0). */
  current: DeviceBuffer;
  zero: DeviceBuffer;
  /** The update's params: seed, iteration and the per-noise coefficients. */
  updateParams: DeviceBuffer;
  /** Bytes per chunk, overriding θ/{@link CHUNK_FRACTION} (tests cut it small). */
  chunkBytes?: number;
  /** Records every buffer a builder makes, so the engine can free it. */
  own: (b: DeviceBuffer) => DeviceBuffer;
}

/** Bytes θ's elements take as stored (f32 or bf16), alignment padding aside. */
export function storedBytes(theta: Map<string, DeviceTensor>): number {
  return [...theta.values()].reduce(
    (a, t) => a + t.shards.reduce((b, s) => b + s.rows * t.rowSize * dtypeBytes(t.dtype), 0),
    0,
  );
}

/**
 * Rows per chunk of a matrix of `rows` rows with room for `most`: as few chunks as fit, cut
 * evenly, the size rounded up to a multiple of 64 where room allows, so the last chunk is not a
 * ragged sliver, the matmul's tiles fit, and each chunk's first output column is a 256-byte
 * binding offset (its matmul then shares one pipeline with the others). At least one row.
 */
export function evenChunkRows(rows: number, most: number): number {
  const room = Math.max(1, Math.min(rows, most));
  const per = Math.ceil(rows / Math.ceil(rows / room));
  const rounded = Math.min(rows, Math.ceil(per / 64) * 64);
  return rounded <= room ? rounded : per;
}

const isMatrix = (ctx: ScratchContext, n: string) => ctx.theta.get(n)!.shape.length === 2;

/** A lookup over `tensors` that falls back to θ itself. */
function lookupOver(ctx: ScratchContext, tensors: Map<string, DeviceTensor>): TensorLookup {
  return (name) => {
    const t = tensors.get(name) ?? ctx.theta.get(name);
    if (!t) throw new Error(`no tensor ${name}`);
    return t;
  };
}

/**
 * The tensors formed whole per member (a slot per batched member, 256 bytes apart at least) and
 * the steps that form a group's: θ + scale·m_σ·ε into them, records read from ctx.current.
 */
function wholeTensors(
  ctx: ScratchContext,
  names: readonly string[],
): { tensors: Map<string, DeviceTensor>; perturb: (count: number) => Step[] } {
  const P = ctx.memberBatch, d = ctx.device;
  const tensors = new Map(names.map((n) => {
    const t = ctx.theta.get(n)!;
    if (P === 1) return [n, createTensor(d, `${n}~member`, t.shape, { purpose: "scratch" })];
    const slot = alignUp(numel(t.shape), 64), rows = t.shape[0];
    const buffer = d.createBuffer(`${n}~member`, P * slot * 4, "scratch");
    const batched: DeviceTensor = {
      name: `${n}~member`,
      shape: t.shape,
      rowSize: t.rowSize,
      shards: [{ buffer, rowStart: 0, rows }],
      memberStride: slot,
    };
    return [n, batched];
  }));
  const tables = new Map(names.map((n) => [
    n,
    createPerturbTable(d, ctx.theta.get(n)!, tensors.get(n)!, {
      tensorId: ctx.names.indexOf(n),
      multiplier: ctx.multipliers(n).sigma,
      memberStride: tensors.get(n)!.memberStride,
    }),
  ]));
  for (const t of tables.values()) ctx.own(t.buffer);
  const perturb = (count: number) =>
    names.flatMap((n) =>
      perturbSteps(d, {
        theta: ctx.theta.get(n)!,
        out: tensors.get(n)!,
        params: ctx.current,
        paramIndex: 0,
        table: tables.get(n)!,
        members: count,
      }).steps
    );
  return { tensors, perturb };
}

/** The full-rank update of `names`: θ += m_α·Σ_i d_i·ε_i per shard. */
function fullRankUpdate(ctx: ScratchContext, names: readonly string[]): Step[] {
  return names.flatMap((n) => {
    const table = createShardTable(ctx.device, ctx.theta.get(n)!, {
      tensorId: ctx.names.indexOf(n),
      multiplier: ctx.multipliers(n).alpha,
    });
    ctx.own(table.buffer);
    return esUpdateSteps(ctx.device, {
      theta: ctx.theta.get(n)!,
      coeffs: ctx.updateParams,
      table,
    }).steps;
  });
}

/** Which chunk buffer a matrix uses: the up projections the second, everything else the first. */
function chunkPool(name: string): number {
  return name.endsWith(".up_proj.weight") ? 1 : 0;
}

/**
 * The two chunk buffers (the up projections into the second, since the MLP reads them with the
 * gate), and the matrices as row chunks formed into them right before each is read: θ +
 * scale·m_σ·ε, the record read from `params` (the group's current records, or the zero record:
 * θ itself, widened from bf16 where stored so).
 */
function chunkPools(ctx: ScratchContext, members: number) {
  const d = ctx.device;
  const matrices = ctx.names.filter((n) => isMatrix(ctx, n));
  // θ's stored bytes: with bf16 θ the f32 chunks hold half as many rows, and the scratch stays
  // the same fraction of θ. Batched members split the budget: the buffers keep their size.
  const thetaBytes = storedBytes(ctx.theta);
  const budget = Math.min(
    Math.floor(d.limits.maxStorageBufferBindingSize / members),
    Math.floor(
      (ctx.chunkBytes ?? Math.max(MIN_CHUNK_BYTES, Math.floor(thetaBytes / CHUNK_FRACTION))) /
        members,
    ),
  );
  const chunkRows = new Map<string, number>();
  const sizes = [0, 0];
  for (const n of matrices) {
    const t = ctx.theta.get(n)!;
    const rows = evenChunkRows(t.shape[0], Math.floor(budget / (t.rowSize * 4)));
    chunkRows.set(n, rows);
    sizes[chunkPool(n)] = Math.max(sizes[chunkPool(n)], rows * t.rowSize * 4);
  }
  // Member z's chunk starts z·slot elements in; a slot is 64-element aligned (256 bytes).
  const slot = alignUp(Math.max(...sizes) / 4, 64);
  const pools = sizes.map((bytes, i) =>
    bytes === 0 ? null : ctx.own(
      d.createBuffer(`member.chunk${i}`, members === 1 ? bytes : members * slot * 4, "scratch"),
    )
  );
  /** The matrices in chunks formed from `params` for `count` members ("member" or "theta"). */
  const chunked = (params: DeviceBuffer, what: string, count = 1) => {
    const out = new Map<string, DeviceTensor>();
    for (const n of matrices) {
      const t = ctx.theta.get(n)!, buffer = pools[chunkPool(n)]!;
      const { chunks, table } = chunkPerturbSteps(d, {
        theta: t,
        tensorId: ctx.names.indexOf(n),
        multiplier: what === "member" ? ctx.multipliers(n).sigma : 0,
        chunkRows: chunkRows.get(n)!,
        out: buffer,
        params,
        paramIndex: 0,
        members: { count, stride: slot },
      });
      ctx.own(table.buffer);
      const filled: FilledTensor = {
        name: `${n}~${what}`,
        shape: t.shape,
        rowSize: t.rowSize,
        shards: chunks.map((c) => ({ buffer, rowStart: c.rowStart, rows: c.rows })),
        fills: chunks.map((c) => [c.step]),
      };
      if (count > 1) filled.memberStride = slot;
      out.set(n, filled);
    }
    return out;
  };
  return { chunked };
}

/**
 * θ in bf16 as the unperturbed forward reads it: matrices through the chunks at scale 0, vectors
 * widened into small f32 copies, each right before it is read.
 */
function bf16ThetaView(
  ctx: ScratchContext,
  chunked: (params: DeviceBuffer, what: string) => Map<string, DeviceTensor>,
): Map<string, DeviceTensor> {
  const view = chunked(ctx.zero, "theta");
  for (const n of ctx.names.filter((n) => !isMatrix(ctx, n))) {
    const t = ctx.theta.get(n)!;
    const copy = createTensor(ctx.device, `${n}~theta`, t.shape, { purpose: "scratch" });
    const { steps, table } = perturbSteps(ctx.device, {
      theta: t,
      out: copy,
      params: ctx.zero,
      paramIndex: 0,
      tensorId: ctx.names.indexOf(n),
    });
    // A vector's fill widens all of it; the forward reads a vector from its one shard.
    const filled: FilledTensor = { ...copy, fills: copy.shards.map((_, i) => i ? [] : steps) };
    view.set(n, filled);
    ctx.own(table.buffer);
    for (const s of copy.shards) ctx.own(s.buffer);
  }
  return view;
}

/** Weight reads per group size, built once per size. */
function perCount(make: (count: number) => WeightLookup): (count: number) => WeightLookup {
  const made = new Map<number, WeightLookup>();
  return (count) => {
    let w = made.get(count);
    if (!w) made.set(count, w = make(count));
    return w;
  };
}

/**
 * "chunks": the vectors formed whole per member, the matrices in row chunks formed right before
 * each is read. The unperturbed forward reads θ's matrices through the same chunks at scale 0 (the
 * same matmul shapes as the members', so no second set of pipelines to compile: on lavapipe a cold
 * first iteration of tiny-austen went 57 s → 47 s), or θ itself when members are batched.
 */
export function chunkScratch(ctx: ScratchContext): ScratchMode {
  const vectors = ctx.names.filter((n) => !isMatrix(ctx, n));
  const whole = wholeTensors(ctx, vectors);
  const { chunked } = chunkPools(ctx, ctx.memberBatch);
  const bf16 = ctx.theta.get(ctx.names[0])!.dtype === "bf16";
  const view = bf16
    ? bf16ThetaView(ctx, chunked)
    : ctx.memberBatch === 1
    ? new Map([...ctx.theta, ...chunked(ctx.zero, "theta")])
    : ctx.theta;
  return {
    theta: tensorReads(ctx.device, lookupOver(ctx, view)),
    members: perCount((count) =>
      tensorReads(
        ctx.device,
        lookupOver(ctx, new Map([...whole.tensors, ...chunked(ctx.current, "member", count)])),
      )
    ),
    perturb: whole.perturb,
    update: fullRankUpdate(ctx, ctx.names),
    tensors: [...whole.tensors.values()],
  };
}

/** "copy": a whole perturbed copy of θ per member, formed once per member. */
export function copyScratch(ctx: ScratchContext): ScratchMode {
  const whole = wholeTensors(ctx, ctx.names);
  const bf16 = ctx.theta.get(ctx.names[0])!.dtype === "bf16";
  const view = bf16 ? bf16ThetaView(ctx, chunkPools(ctx, ctx.memberBatch).chunked) : ctx.theta;
  const members = tensorReads(ctx.device, lookupOver(ctx, whole.tensors));
  return {
    theta: tensorReads(ctx.device, lookupOver(ctx, view)),
    members: () => members,
    perturb: whole.perturb,
    update: fullRankUpdate(ctx, ctx.names),
    tensors: [...whole.tensors.values()],
  };
}

/**
 * Low rank (EGGROLL): each perturbed matrix stays θ and gets a member's factors a = ±σ_t·m_σ/√r·A
 * (O, r4) and Bᵀ (r4, I); the forward adds σ/√r·(x·B)·Aᵀ after each read ({@link lowRankReads}).
 * The vectors are formed whole with full-rank noise. Matrices with σ multiplier 0 are read as θ
 * itself; with α multiplier 0 they get no update steps.
 */
export function lowRankScratch(ctx: ScratchContext, rank: number): ScratchMode {
  const d = ctx.device, P = ctx.memberBatch;
  const r4 = paddedRank(rank);
  const binding = d.limits.maxStorageBufferBindingSize;
  const buffer = (label: string, bytes: number, purpose: BufferPurpose = "scratch") => {
    if (bytes > binding) {
      throw new UserError(
        `low-rank ${label} needs ${bytes} bytes, over the ${binding}-byte binding limit of ` +
          `${d.name}; lower the rank or the population`,
      );
    }
    return ctx.own(d.createBuffer(label, bytes, purpose));
  };
  const vectors = ctx.names.filter((n) => !isMatrix(ctx, n));
  const whole = wholeTensors(ctx, vectors);
  const u = buffer("act.lowrank.u", P * ctx.rows * r4 * 4, "activations");
  const matrices = ctx.names.filter((n) => isMatrix(ctx, n));
  for (const n of matrices) {
    const [rows, cols] = ctx.theta.get(n)!.shape;
    if (rank > Math.min(rows, cols)) {
      throw new UserError(`rank ${rank} exceeds min(out, in) = ${Math.min(rows, cols)} of ${n}`);
    }
  }
  const step = 1 / Math.sqrt(rank);
  const deltas = new Map<string, LowRankDelta>();
  const slots = new Map<string, { a: number; b: number }>();
  const records: FactorRecord[] = [];
  const outs: { label: string; out: DeviceBuffer; slot: number }[] = [];
  for (const n of matrices) {
    const [O, I] = ctx.theta.get(n)!.shape;
    const m = ctx.multipliers(n).sigma;
    if (m === 0) continue;
    const ids = lowRankCounterIds(ctx.names.indexOf(n));
    // One slot per member, 64 elements apart at least (256 bytes: a binding offset).
    const aSlot = P === 1 ? O * r4 : alignUp(O * r4, 64);
    const bSlot = P === 1 ? r4 * I : alignUp(r4 * I, 64);
    const a = buffer(`${n}~member.a`, P * aSlot * 4);
    const bt = buffer(`${n}~member.bt`, P * bSlot * 4);
    deltas.set(n, { rank, r4, a, bt, u });
    slots.set(n, { a: aSlot, b: bSlot });
    const base = { row0: 0, rank, noiseStride: 0 };
    records.push(
      {
        ...base,
        tensor: ids.a,
        rows: O,
        rowStride: r4,
        kStride: 1,
        scaled: true,
        multiplier: m * step,
      },
      { ...base, tensor: ids.b, rows: I, rowStride: 1, kStride: I, scaled: false, multiplier: 1 },
    );
    outs.push(
      { label: `lowrank_factors.${n}.a`, out: a, slot: aSlot },
      { label: `lowrank_factors.${n}.b`, out: bt, slot: bSlot },
    );
  }
  const memberTable = createFactorTable(d, "lowrank.member_factors", records);
  ctx.own(memberTable.buffer);
  // Member z of a group reads record z of the current records and writes its factors into slot z.
  const stride = paramStride(d);
  const factors = (count: number) =>
    Array.from({ length: count }, (_, z) =>
      outs.map((x, i) =>
        lowRankFactorStep(d, {
          label: count > 1 ? `${x.label}.member${z}` : x.label,
          table: memberTable,
          index: i,
          params: { buffer: ctx.current, offset: z * stride, size: recordBytes(PERTURB) },
          out: count > 1 ? { buffer: x.out, offset: z * x.slot * 4, size: x.slot * 4 } : x.out,
          mode: "member",
        })
      )).flat();
  const base = tensorReads(d, lookupOver(ctx, whole.tensors));
  const shape = (name: string) => ctx.theta.get(name)!.shape;
  return {
    theta: tensorReads(d, lookupOver(ctx, ctx.theta)),
    members: perCount((count) => {
      if (count === 1) return lowRankReads(d, base, deltas, shape);
      // The group's deltas: member z's factors in slot z.
      const grouped = new Map([...deltas].map(([n, delta]) => {
        const s = slots.get(n)!;
        return [n, { ...delta, members: { count, aStride: s.a, bStride: s.b } }];
      }));
      return lowRankReads(d, base, grouped, shape);
    }),
    perturb: (count) => [...whole.perturb(count), ...factors(count)],
    update: [...fullRankUpdate(ctx, vectors), ...lowRankUpdate(ctx, rank, buffer)],
    tensors: [...whole.tensors.values()],
  };
}

/**
 * The low-rank update, in groups of g noises: per group and matrix, B̃ (I, g·r4) = [B_i …], then
 * per shard of θ Ã (rows, g·r4) = [d_i·m_α/√r·A_i …] on its rows and θ_shard += Ã·B̃ᵀ. The group
 * is as large as keeps Ã and B̃ of the largest matrix within θ/64 (all n noises at once on a big
 * model; on the tiny preset 8 of 30), so the update's buffers stay a small part of θ.
 */
function lowRankUpdate(
  ctx: ScratchContext,
  rank: number,
  buffer: (label: string, bytes: number, purpose?: BufferPurpose) => DeviceBuffer,
): Step[] {
  const d = ctx.device, r4 = paddedRank(rank), step = 1 / Math.sqrt(rank);
  const noises = noiseCount(ctx.population, ctx.antithetic);
  const updated = ctx.names.filter((n) => isMatrix(ctx, n) && ctx.multipliers(n).alpha !== 0);
  if (updated.length === 0) return [];
  const maxRows = Math.max(...updated.flatMap((n) => ctx.theta.get(n)!.shards.map((s) => s.rows)));
  const maxCols = Math.max(...updated.map((n) => ctx.theta.get(n)!.shape[1]));
  const perNoise = (maxRows + maxCols) * r4 * 4;
  const group = Math.max(
    1,
    Math.min(noises, Math.floor(storedBytes(ctx.theta) / (2 * CHUNK_FRACTION) / perNoise)),
  );
  const K = group * r4;
  const aBuf = buffer("lowrank_update.a", maxRows * K * 4, "es");
  const bBuf = buffer("lowrank_update.b", maxCols * K * 4, "es");
  const records: FactorRecord[] = [];
  const plan: { label: string; out: DeviceBuffer; matmul?: () => Step }[] = [];
  for (let noise0 = 0; noise0 < noises; noise0 += group) {
    // Every group spans `group` noise columns; past the last noise they are written as zeros.
    const span = group, G = noises > group ? `.g${noise0}` : "";
    for (const n of updated) {
      const t = ctx.theta.get(n)!, [, I] = t.shape;
      const ids = lowRankCounterIds(ctx.names.indexOf(n));
      const base = { rank, rowStride: K, noiseStride: r4, kStride: 1, noise0, span };
      records.push({ ...base, tensor: ids.b, row0: 0, rows: I, scaled: false, multiplier: 1 });
      plan.push({ label: `lowrank_update.${n}${G}.b`, out: bBuf });
      t.shards.forEach((s, k) => {
        if (s.rows === 0) return;
        const label = `lowrank_update.${n}${t.shards.length > 1 ? `#${k}` : ""}${G}`;
        records.push({
          ...base,
          tensor: ids.a,
          row0: s.rowStart,
          rows: s.rows,
          scaled: true,
          multiplier: ctx.multipliers(n).alpha * step,
        });
        plan.push({
          label: `${label}.a`,
          out: aBuf,
          matmul: () =>
            matmulStep(d, {
              label,
              x: aBuf,
              m: s.rows,
              k: K,
              w: bBuf,
              n: I,
              out: s.buffer,
              accumulate: true,
            }),
        });
      });
    }
  }
  const table = createFactorTable(d, "lowrank.update_factors", records);
  ctx.own(table.buffer);
  return plan.flatMap((p, i) => [
    lowRankFactorStep(d, {
      label: p.label,
      table,
      index: i,
      params: ctx.updateParams,
      out: p.out,
      mode: "update",
      noises,
    }),
    ...(p.matmul ? [p.matmul()] : []),
  ]);
}

/**
 * Reads over `base` with each matrix of `deltas` corrected by its low-rank delta: after x·Wᵀ the
 * forward adds σ/√r·(x·B)·Aᵀ (two thin matmuls through a rank-r bottleneck); the gather adds
 * a[ids]·Bᵀ; the LM head projects u = xn·B once and adds u·A[chunk]ᵀ to each chunk's logits. A
 * batched delta's matmuls run member by member in grid z over each member's rows.
 */
export function lowRankReads(
  device: Device,
  base: WeightLookup,
  deltas: Map<string, LowRankDelta>,
  shape: (name: string) => readonly number[],
): WeightLookup {
  const rowsOf = (delta: LowRankDelta, m: number, members: number) =>
    delta.members && delta.members.count > 1 ? m : members * m;
  const linear: WeightLookup["linear"] = (name, o) => {
    const delta = deltas.get(name);
    if (!delta) return base.linear(name, o);
    return [
      ...base.linear(name, o),
      ...lowRankLinearSteps(device, {
        label: o.label,
        x: o.x,
        m: rowsOf(delta, o.m, o.members),
        k: o.k,
        n: shape(name)[0],
        delta,
        out: o.out,
      }),
    ];
  };
  return {
    vector: (name) => base.vector(name),
    linear,
    gateUp(o) {
      if (!deltas.has(o.gate) && !deltas.has(o.up)) return base.gateUp(o);
      // Low rank adds each projection's delta after its matmul, so silu waits for both.
      const up = o.upScratch();
      const read = (name: string, which: string, out: DeviceBuffer) =>
        linear(name, {
          label: `${o.layer}.mlp.${which}`,
          x: o.x,
          m: o.m,
          k: o.k,
          out,
          members: o.members,
        });
      return [
        ...read(o.gate, "gate_proj", o.out),
        ...read(o.up, "up_proj", up),
        swigluStep(device, {
          label: `${o.layer}.swiglu`,
          gate: o.out,
          up,
          rows: o.members * o.m,
          width: shape(o.gate)[0],
        }),
      ];
    },
    gather(name, o) {
      const delta = deltas.get(name);
      const steps = base.gather(name, o);
      if (!delta) return steps;
      return [
        ...steps,
        lowRankEmbedStep(device, {
          label: o.label,
          ids: o.ids,
          delta,
          x: o.x,
          rows: o.members * o.m,
          hidden: o.hidden,
        }),
      ];
    },
    head(name, o, fold) {
      const delta = deltas.get(name);
      if (!delta) return base.head(name, o, fold);
      const m = rowsOf(delta, o.m, o.members);
      return [
        lowRankProjectStep(device, { label: "lm_head", x: o.x, m, k: o.k, delta }),
        ...base.head(name, o, (start, n) => [
          lowRankApplyStep(device, {
            label: `lm_head[${start}:${start + n}]`,
            m,
            n,
            delta,
            wRowOffset: start,
            out: o.logits,
          }),
          ...fold(start, n),
        ]),
      ];
    },
  };
}
