/**
 * The ES engine on the GPU: one iteration of EA4LLM (Algorithm 2) as one submit and one readback.
 *
 * Legend: N = population, M = samples per iteration, B = micro-batch, T = tokens, P = parameters.
 *
 *   per iteration t:
 *     write perturb params (seed, t, noise index and signed σ_t of each member slot)
 *     write the iteration's packed tokens (all micro-batches, one upload)
 *     [held-out: forward over θ for each held-out micro-batch → R per sample]
 *     for member j (or a group of memberBatch members at once):   θ is only read, never modified
 *       copy j's perturb record(s) to the current-members buffer
 *       vectors_j = θ + σ_t·m_g·ε_j          perturb kernel into their scratch (small)
 *       for micro-batch b: copy its tokens in, forward(θ_j), fitness, total[j] += Σ R
 *         where each matrix's row chunk of θ_j is formed just before the forward reads it
 *     read back total[0..N) (and held-out R): the iteration's only round trip
 *   then, on the CPU: F_j = total_j/M, w = shape(F), c = update coefficients (pure functions)
 *   and on the GPU: θ += Σ_i d_i·m_α·ε_i, the noise regenerated from the seed, one pass over θ.
 *
 * Memory: θ, the member's scratch, the activation workspace of one micro-batch, and the
 * iteration's tokens. The scratch ("chunks", the default) is the perturbed vectors plus two chunk
 * buffers of about θ/32 each: a matrix's rows are perturbed a chunk at a time into a chunk buffer
 * right before the matmul (or gather, or LM-head pass) that reads them, so the peak stays near
 * 1.08× θ. "copy" keeps a whole θ_j instead (2× θ) and forms each member's noise once rather than
 * once per micro-batch. Either way each element's noise is the same.
 *
 * Low-rank mode (`lowRank`, EGGROLL; kernels/lowrank.ts): a matrix's perturbation is
 * σ_t·m_g·A_j·B_jᵀ/√r. The perturb steps write only the member's factors a = ±σ_t·m_g/√r·A_j
 * (O, r4) and Bᵀ (r4, I) and its perturbed vectors (norms, biases: full-rank noise, a small
 * scratch); the forward reads θ's matrices and adds σ/√r·(x·B)·Aᵀ after each (kernels/lowrank.ts
 * LowRankTensor). The update is θ += Σ_i d_i·m_α/√r·A_i·B_iᵀ as matmuls per shard and group
 * of g noises, Ã (rows, g·r4) · B̃ (I, g·r4)ᵀ, plus the full-rank update of the vectors. Memory:
 * θ, the vectors' scratch, the factors (r4·(O + I) per matrix and member of a group), u (rows,
 * r4), and Ã and B̃ of the largest matrix for one group (within θ/64).
 *
 * Population batching (`memberBatch`): a group's activations lie side by side and each dispatch
 * covers the group (matmuls as a grid of members, member z reading its chunk slot or factors; in
 * low rank the base x·Wᵀ is one matmul over all the group's rows).
 *
 * bf16 storage (`storage`): θ is read only through perturb kernels that widen it to f32 (the
 * unperturbed forward through the same chunks at scale 0), and the update rounds stochastically.
 *
 * @module
 */
import {
  alignUp,
  type Block,
  type BufferPurpose,
  type Copy,
  type Device,
  type DeviceBuffer,
  type Op,
  type Program,
  type ReadSource,
  staged,
} from "../kernels/device.ts";
import {
  createTensor,
  destroyTensor,
  dtypeBytes,
  type FilledTensor,
  type DeviceTensor,
  numel,
  type StorageDtype,
} from "../kernels/tensor.ts";
import type { Step } from "../kernels/program.ts";
import { accumulateStep, slotStride } from "../kernels/accumulate.ts";
import {
  chunkPerturbSteps,
  createPerturbTable,
  createShardTable,
  createUpdateParams,
  encodePerturbParams,
  encodeUpdateParams,
  esUpdateSteps,
  paramStride,
  perturbSteps,
} from "../kernels/es_update.ts";
import type { Qwen3Config } from "../model/config.ts";
import { qwen3TensorSpecs } from "../model/weights.ts";
import { downloadWeights, uploadWeights } from "../model/device_weights.ts";
import { Qwen3Forward, type WeightLookup } from "../model/forward.ts";
import type { TensorData, TensorStream } from "../model/safetensors.ts";
import type { PackedBatches } from "./data.ts";
import { type MemberRecord, noiseCount } from "./es.ts";
import {
  createFactorTable,
  type FactorRecord,
  lowRankCounterIds,
  lowRankFactorStep,
  lowRankOf,
  type LowRankTensor,
  paddedRank,
} from "../kernels/lowrank.ts";
import { matmulStep } from "../kernels/matmul.ts";
import { UserError } from "./errors.ts";
import type { FitnessImpl } from "./stages/types.ts";

/** Options of {@link EsEngine.create}. */
export interface EsEngineOptions {
  config: Qwen3Config;
  /** The initial θ, one tensor at a time; absent when only planning (θ is allocated, not filled). */
  tensors?: TensorStream;
  seed: number;
  population: number;
  antithetic: boolean;
  /** Most samples per iteration (M) and per held-out pass. */
  maxSamples: number;
  microBatch: number;
  maxLen: number;
  fitness: FitnessImpl;
  /** σ and α multipliers of each tensor (group multipliers). */
  multipliers: (tensor: string) => { sigma: number; alpha: number };
  /**
   * Share the unperturbed prefix (the embedding and the layers below the first one any member
   * perturbs) across members: computed once per micro-batch and iteration. Default true.
   */
  prefixCache?: boolean;
  /**
   * Low-rank perturbations of every matrix (EGGROLL) with this rank; vectors keep full-rank
   * noise. Absent: full-rank noise everywhere.
   */
  lowRank?: { rank: number };
  /**
   * Where a member's full-rank perturbed matrices live. "chunks" (default): each matrix is
   * perturbed in row chunks right before the forward reads them, into a scratch of about
   * 1/{@link CHUNK_FRACTION} of θ, so the noise is formed once per micro-batch. "copy": a whole
   * perturbed copy of θ per member (twice θ's memory), the noise formed once per member.
   */
  scratch?: "chunks" | "copy";
  /** "chunks" mode: bytes per chunk, overriding θ/{@link CHUNK_FRACTION} (tests cut it small). */
  chunkBytes?: number;
  /**
   * Population batching: members evaluated at once, in the same dispatches (their activations
   * side by side, each matmul a grid of members; in low rank one matmul with the shared θ over
   * all the group's rows, then each member's x·B and u·Aᵀ). "chunks" mode or low rank, with a
   * fitness stage that handles members; otherwise 1. Default 1. Each member adds one micro-batch
   * of activation workspace; the chunk buffers keep their total size (each member's chunk
   * shrinks), low-rank factors take one slot per member. "auto": {@link autoMemberBatch}.
   */
  memberBatch?: number | "auto";
  /**
   * How θ is stored: "f32" (default), or "bf16", which halves θ's bytes. In bf16 every read of θ
   * goes through a perturb kernel that widens it to f32 (members through their chunks, the
   * unperturbed forward through the same chunks with σ = 0), and the update rounds each element
   * stochastically (kernels/es_update.ts APPLY_BF16) so steps far below a bf16 ulp still count.
   * Full rank only.
   */
  storage?: StorageDtype;
}

/**
 * In "chunks" scratch mode, a chunk of a matrix is at most 1/CHUNK_FRACTION of θ's bytes (and at
 * least {@link MIN_CHUNK_BYTES}, and at least one row). Two chunk buffers exist (the gate and up
 * projections are read together), so the scratch is about 2/32 of θ.
 */
export const CHUNK_FRACTION = 32;
/** The smallest chunk budget, so a small model is not cut into slivers of dispatches. */
export const MIN_CHUNK_BYTES = 16 * 1024;

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

/**
 * The member batch "auto" picks, from memory: the most members (up to the population) whose
 * activations together stay within θ's own bytes (so batching at most doubles the memory beside
 * the weights, whatever the model) and whose widest activation fits the binding limit. At least
 * one. Measured on lavapipe, batching is slower than one member at a time (larger working sets
 * than the CPU's caches); it is for GPUs, where a small model's dispatches are too small to fill
 * the device.
 */
export function autoMemberBatch(o: {
  config: Qwen3Config;
  population: number;
  microBatch: number;
  maxLen: number;
  thetaBytes: number;
  binding: number;
  /** Low rank keeps the up projection's output apart (the fused MLP matmul does not). */
  lowRank?: boolean;
}): number {
  const c = o.config, rows = o.microBatch * o.maxLen;
  const q = c.numHeads * c.headDim, kv = c.numKvHeads * c.headDim;
  // Per token: x, xn, q, attn, k, v, gate (and up in low rank), the LM-head chunk (≤ 8192) and
  // the LSE state.
  const perRow = 4 * (2 * c.hiddenSize + 2 * q + 2 * kv + (o.lowRank ? 2 : 1) * c.intermediateSize +
    Math.min(c.vocabSize, 8192) + 3);
  const widest = 4 * rows * Math.max(c.hiddenSize, q, c.intermediateSize);
  const byMemory = Math.floor(o.thetaBytes / (perRow * rows));
  const byBinding = Math.floor(o.binding / widest);
  return Math.max(1, Math.min(o.population, byMemory, byBinding));
}

/** Bytes θ's elements take as stored (f32 or bf16), alignment padding aside. */
function storedBytes(theta: Map<string, DeviceTensor>): number {
  return [...theta.values()].reduce(
    (a, t) => a + t.shards.reduce((b, s) => b + s.rows * t.rowSize * dtypeBytes(t.dtype), 0),
    0,
  );
}

/** Which chunk buffer a matrix uses: the up projections the second, everything else the first. */
function chunkPool(name: string): number {
  return name.endsWith(".up_proj.weight") ? 1 : 0;
}

/**
 * The number of leading layers no member perturbs: 0 unless the embedding has σ multiplier 0,
 * else the first layer with a perturbed tensor. Their output is the same for every member.
 */
export function unperturbedPrefix(
  config: Qwen3Config,
  multipliers: (tensor: string) => { sigma: number },
): number {
  const names = qwen3TensorSpecs(config).map((s) => s.name);
  if (multipliers("model.embed_tokens.weight").sigma !== 0) return 0;
  for (let l = 0; l < config.numLayers; l++) {
    const prefix = `model.layers.${l}.`;
    if (names.some((n) => n.startsWith(prefix) && multipliers(n).sigma !== 0)) return l;
  }
  // No layer is perturbed: only the final norm and the head differ between members.
  return config.numLayers;
}

/** What one iteration's evaluation returns. */
export interface IterationResult {
  /** F_j = mean over the subset of R, per member. */
  fitness: number[];
  /** Held-out R per sample, when asked for. */
  heldOut?: number[];
}

/** Input buffers of a packed set of micro-batches. */
interface PackedInputs {
  ids: DeviceBuffer;
  mask: DeviceBuffer;
  target: DeviceBuffer;
}

/** The ES engine: θ, the members' scratch, the forward, and the per-iteration GPU work. */
export class EsEngine {
  readonly device: Device;
  readonly config: Qwen3Config;
  readonly options: EsEngineOptions;
  readonly names: string[];
  readonly theta: Map<string, DeviceTensor>;
  /** The member's perturbed tensors: all of θ, or only the vectors in low-rank mode. */
  readonly scratch: Map<string, DeviceTensor>;
  /** What the member's forward binds per tensor: scratch, θ, or θ with a low-rank delta. */
  #member = new Map<string, DeviceTensor>();
  readonly forward: Qwen3Forward;
  #params: DeviceBuffer;
  /** The record of the member being evaluated, copied from #params: what chunk fills read. */
  #current: DeviceBuffer;
  #zero: DeviceBuffer;
  #update: DeviceBuffer;
  #totals: DeviceBuffer;
  #heldOut: DeviceBuffer;
  #iter: PackedInputs;
  #hold: PackedInputs;
  #holdLayout: PackedBatches["layout"] = [];
  /** Steps that perturb the members' whole tensors, per group size (read from #current). */
  #perturbFor = new Map<number, Step[]>();
  #perturbBuild: (count: number) => Step[] = () => [];
  /** Members evaluated at once ({@link EsEngineOptions.memberBatch}, where it applies). */
  readonly memberBatch: number;
  #updateSteps: Step[];
  #prefix: DeviceBuffer | null;
  /** Leading layers no member perturbs, computed once per iteration (0: no prefix cache). */
  readonly prefixLayers: number;
  #own: DeviceBuffer[];

  private constructor(device: Device, options: EsEngineOptions, theta: Map<string, DeviceTensor>) {
    const gpu = device;
    this.device = device;
    this.options = options;
    this.config = options.config;
    this.theta = theta;
    this.names = qwen3TensorSpecs(options.config).map((s) => s.name);
    const N = options.population;
    const lowRank = options.lowRank;
    const isMatrix = (n: string) => theta.get(n)!.shape.length === 2;
    const isLowRank = (n: string) => lowRank !== undefined && isMatrix(n);
    const chunked = lowRank === undefined && options.scratch !== "copy";
    const bf16 = options.storage === "bf16";
    if (bf16 && lowRank) {
      throw new UserError(
        "bf16 storage needs full-rank perturbations: the low-rank forward reads θ's matrices " +
          "directly; use perturb type gaussian or model storage f32",
      );
    }
    const wanted = options.memberBatch === "auto"
      ? autoMemberBatch({
        config: options.config,
        population: N,
        microBatch: options.microBatch,
        maxLen: options.maxLen,
        thetaBytes: storedBytes(theta),
        lowRank: lowRank !== undefined,
        binding: gpu.limits.maxStorageBufferBindingSize,
      })
      : options.memberBatch ?? 1;
    const P = (chunked || lowRank) && options.fitness.members
      ? Math.max(1, Math.min(N, Math.floor(wanted)))
      : 1;
    this.memberBatch = P;
    // Tensors the perturb stage writes whole per member: all of θ in "copy" mode, else vectors.
    const whole = this.names.filter((n) => !isLowRank(n) && !(chunked && isMatrix(n)));
    this.scratch = new Map(
      whole.map((n) => {
        const t = theta.get(n)!;
        if (P === 1) return [n, createTensor(gpu, `${n}~member`, t.shape, { purpose: "scratch" })];
        // One slot per member, 64 elements apart at least (256 bytes: a binding offset).
        const slot = alignUp(numel(t.shape), 64), rows = t.shape[0];
        const buffer = gpu.createBuffer(`${n}~member`, P * slot * 4, "scratch");
        const batched: DeviceTensor = {
          name: `${n}~member`,
          shape: t.shape,
          rowSize: t.rowSize,
          shards: [{ buffer, rowStart: 0, rows }],
          memberStride: slot,
        };
        return [n, batched];
      }),
    );
    for (const [n, t] of this.scratch) this.#member.set(n, t);
    // The forward's own weights are θ as read unperturbed (widened from bf16 where stored so).
    this.forward = new Qwen3Forward(gpu, options.config, (name) => this.#thetaWeights(name), {
      maxBatch: P * options.microBatch,
      maxSeqLen: options.maxLen,
    });
    const stride = paramStride(gpu);
    this.#params = gpu.createBuffer("perturb.params", stride * N, "es");
    this.#current = gpu.createBuffer("perturb.current", stride * P, "es");
    // All zeros: a record with scale 0, which widens θ without noise (bf16 storage).
    this.#zero = gpu.createBuffer("perturb.zero", stride, "es");
    this.#totals = gpu.createBuffer("fitness.totals", slotStride(gpu) * N, "es");
    this.#update = createUpdateParams(gpu, N);
    const tokens = options.maxSamples * options.maxLen * 4;
    const inputs = (label: string): PackedInputs => ({
      ids: gpu.createBuffer(`${label}.ids`, tokens, "tokens"),
      mask: gpu.createBuffer(`${label}.mask`, tokens, "tokens"),
      target: gpu.createBuffer(`${label}.target`, tokens, "tokens"),
    });
    this.#iter = inputs("iteration");
    this.#hold = inputs("heldout");
    this.#heldOut = gpu.createBuffer("heldout.r", options.maxSamples * 4, "es");
    this.prefixLayers = options.prefixCache === false
      ? 0
      : unperturbedPrefix(options.config, options.multipliers);
    this.#prefix = this.prefixLayers > 0
      ? gpu.createBuffer(
        "prefix.x",
        options.maxSamples * options.maxLen * options.config.hiddenSize * 4,
        "activations",
      )
      : null;
    this.#own = [
      ...(this.#prefix ? [this.#prefix] : []),
      this.#params,
      this.#current,
      this.#zero,
      this.#totals,
      this.#update,
      this.#heldOut,
      ...Object.values(this.#iter),
      ...Object.values(this.#hold),
    ];

    // Perturb and update steps are built once: everything that changes per member or per
    // iteration lives in the params buffers, written before each submit.
    const matrices = this.names.filter(isMatrix);
    this.#matrices = matrices;
    if (chunked || bf16) this.#chunkBuffers(matrices, P);
    if (chunked && !bf16 && P === 1) {
      // The unperturbed forward (held-out loss, the shared prefix) reads θ's matrices through
      // the same chunks at scale 0: the same matmul shapes as the members', so no second set of
      // pipelines to compile (on lavapipe a cold first iteration of tiny-austen went 57 s → 47 s).
      this.#view = new Map([...theta, ...this.#chunked(matrices, this.#zero, "theta")]);
    }
    if (bf16) {
      // θ as the unperturbed forward reads it: matrices through the chunks at scale 0, vectors
      // widened into small f32 copies, each right before it is read.
      this.#view = this.#chunked(matrices, this.#zero, "theta");
      for (const n of this.names.filter((n) => !isMatrix(n))) {
        const t = theta.get(n)!, view = createTensor(gpu, `${n}~theta`, t.shape, { purpose: "scratch" });
        const { steps, table } = perturbSteps(gpu, {
          theta: t,
          out: view,
          params: this.#zero,
          paramIndex: 0,
          tensorId: this.names.indexOf(n),
        });
        // A vector's fill widens all of it; the forward reads a vector from its one shard.
        const filled: FilledTensor = { ...view, fills: view.shards.map((_, i) => i ? [] : steps) };
        this.#view.set(n, filled);
        this.#own.push(table.buffer, ...view.shards.map((sh) => sh.buffer));
      }
    }
    const vectors = this.names.filter((n) => !isLowRank(n));
    const perturbTables = new Map(whole.map((n) => [
      n,
      createPerturbTable(gpu, theta.get(n)!, this.scratch.get(n)!, {
        tensorId: this.names.indexOf(n),
        multiplier: options.multipliers(n).sigma,
        memberStride: this.scratch.get(n)!.memberStride,
      }),
    ]));
    const lowRankSteps = lowRank ? this.#lowRank(lowRank.rank) : null;
    // A group of `count` members reads its records from #current (evaluate copies them in).
    this.#perturbBuild = (count) => [
      ...whole.flatMap((n) =>
        perturbSteps(gpu, {
          theta: theta.get(n)!,
          out: this.scratch.get(n)!,
          params: this.#current,
          paramIndex: 0,
          table: perturbTables.get(n)!,
          members: count,
        }).steps
      ),
      ...(lowRankSteps ? lowRankSteps.member(count) : []),
    ];
    const updateTables = vectors.map((n) =>
      createShardTable(gpu, theta.get(n)!, {
        tensorId: this.names.indexOf(n),
        multiplier: options.multipliers(n).alpha,
      })
    );
    this.#updateSteps = vectors.flatMap((n, k) =>
      esUpdateSteps(gpu, { theta: theta.get(n)!, coeffs: this.#update, table: updateTables[k] })
        .steps
    );
    if (lowRankSteps) this.#updateSteps.push(...lowRankSteps.update);
    this.#own.push(...[...perturbTables.values(), ...updateTables].map((t) => t.buffer));
  }

  /**
   * The two chunk buffers of "chunks" mode (and of bf16 storage): a matrix's rows are formed a
   * chunk at a time into one of them (the up projections into the second, since the MLP reads
   * them together with the gate) right before the forward reads the chunk. A chunk is at most
   * θ/{@link CHUNK_FRACTION} bytes and at least one row.
   */
  #chunkBuffers(matrices: string[], members: number): void {
    const gpu = this.device, o = this.options;
    // θ's stored bytes: with bf16 θ the f32 chunks hold half as many rows, and the scratch stays
    // the same fraction of θ.
    const thetaBytes = storedBytes(this.theta);
    // Batched members split the budget: the chunk buffers stay the same size in all.
    const budget = Math.min(
      Math.floor(gpu.limits.maxStorageBufferBindingSize / members),
      Math.floor(
        (o.chunkBytes ?? Math.max(MIN_CHUNK_BYTES, Math.floor(thetaBytes / CHUNK_FRACTION))) /
          members,
      ),
    );
    const sizes = [0, 0];
    for (const n of matrices) {
      const t = this.theta.get(n)!;
      const rows = evenChunkRows(t.shape[0], Math.floor(budget / (t.rowSize * 4)));
      this.#chunkRows.set(n, rows);
      sizes[chunkPool(n)] = Math.max(sizes[chunkPool(n)], rows * t.rowSize * 4);
    }
    // Member z's chunk starts z·slot elements in; a slot is 64-element aligned (256 bytes).
    this.#chunkSlot = alignUp(Math.max(...sizes) / 4, 64);
    this.#chunkPools = sizes.map((bytes, i) => {
      if (bytes === 0) return null;
      const b = gpu.createBuffer(
        `member.chunk${i}`,
        members === 1 ? bytes : members * this.#chunkSlot * 4,
        "scratch",
      );
      this.#own.push(b);
      return b;
    });
  }
  #chunkSlot = 0;
  /** Low rank: elements between members' a and bt slots, per matrix. */
  #lowRankSlots = new Map<string, { a: number; b: number }>();
  #matrices: string[] = [];
  /** The members' weights per group size: chunked matrices and the whole tensors' scratch. */
  #memberFor = new Map<number, Map<string, DeviceTensor>>();

  /** What the forward of a group of `count` members binds per tensor. */
  #membersWeights(count: number): WeightLookup {
    let map = this.#memberFor.get(count);
    if (!map) {
      map = new Map(this.#member);
      const chunked = this.options.lowRank === undefined && this.options.scratch !== "copy";
      if (count > 1) {
        // Low rank: the group's deltas, member z's factors in slot z.
        for (const [n, t] of map) {
          const delta = lowRankOf(t), slots = this.#lowRankSlots.get(n);
          if (!delta || !slots) continue;
          const members = { count, aStride: slots.a, bStride: slots.b };
          map.set(n, { ...t, lowRank: { ...delta, members } } as LowRankTensor);
        }
      }
      if (chunked) {
        for (const [n, t] of this.#chunked(this.#matrices, this.#current, "member", count)) {
          map.set(n, t);
        }
      }
      this.#memberFor.set(count, map);
    }
    const m = map;
    return (name) => {
      const t = m.get(name) ?? this.theta.get(name);
      if (!t) throw new Error(`no tensor ${name}`);
      return t;
    };
  }

  /**
   * Each matrix as a list of row chunks that all live in its chunk buffer, each filled with
   * θ + scale·m_g·ε by its perturb step right before the forward reads it, the record read from
   * `params` (#current: the member being evaluated, which evaluate copies in; #zero: θ itself).
   */
  #chunked(
    matrices: string[],
    params: DeviceBuffer,
    what: string,
    count = 1,
  ): Map<string, DeviceTensor> {
    const out = new Map<string, DeviceTensor>();
    for (const n of matrices) {
      const t = this.theta.get(n)!, buffer = this.#chunkPools[chunkPool(n)]!;
      const { chunks, table } = chunkPerturbSteps(this.device, {
        theta: t,
        tensorId: this.names.indexOf(n),
        multiplier: what === "member" ? this.options.multipliers(n).sigma : 0,
        chunkRows: this.#chunkRows.get(n)!,
        out: buffer,
        params,
        paramIndex: 0,
        members: { count, stride: this.#chunkSlot },
      });
      this.#own.push(table.buffer);
      const filled: FilledTensor = {
        name: `${n}~${what}`,
        shape: t.shape,
        rowSize: t.rowSize,
        shards: chunks.map((c) => ({ buffer, rowStart: c.rowStart, rows: c.rows })),
        fills: chunks.map((c) => [c.step]),
      };
      if (count > 1) filled.memberStride = this.#chunkSlot;
      out.set(n, filled);
    }
    return out;
  }
  #chunkRows = new Map<string, number>();
  #chunkPools: (DeviceBuffer | null)[] = [];
  /** bf16 storage: θ as the unperturbed forward reads it, widened to f32 where it is read. */
  #view: Map<string, DeviceTensor> | null = null;

  /**
   * Low-rank mode: the member's factor buffers and delta per perturbed matrix (bound in
   * #member), the factor steps of each member slot, and the update's steps. Matrices with σ
   * multiplier 0 are bound as θ itself; with α multiplier 0 they get no update steps.
   */
  #lowRank(rank: number): { member: (count: number) => Step[]; update: Step[] } {
    const gpu = this.device, o = this.options, N = o.population, P = this.memberBatch;
    const r4 = paddedRank(rank);
    const binding = gpu.limits.maxStorageBufferBindingSize;
    const buffer = (label: string, bytes: number, purpose: BufferPurpose = "scratch") => {
      if (bytes > binding) {
        throw new UserError(
          `low-rank ${label} needs ${bytes} bytes, over the ${binding}-byte binding limit of ` +
            `${gpu.name}; lower the rank or the population`,
        );
      }
      const b = gpu.createBuffer(label, bytes, purpose);
      this.#own.push(b);
      return b;
    };
    const u = buffer("act.lowrank.u", P * o.microBatch * o.maxLen * r4 * 4, "activations");
    const matrices = this.names.filter((n) => this.theta.get(n)!.shape.length === 2);
    for (const n of matrices) {
      const [rows, cols] = this.theta.get(n)!.shape;
      if (rank > Math.min(rows, cols)) {
        throw new UserError(`rank ${rank} exceeds min(out, in) = ${Math.min(rows, cols)} of ${n}`);
      }
    }
    const step = 1 / Math.sqrt(rank);
    // The member's factors: a = ±σ_t·m_σ/√r·A (O, r4) and Bᵀ (r4, I).
    const records: FactorRecord[] = [];
    const outs: { label: string; out: DeviceBuffer; slot: number }[] = [];
    for (const n of matrices) {
      const t = this.theta.get(n)! as LowRankTensor, [O, I] = t.shape;
      const m = o.multipliers(n).sigma;
      if (m === 0) continue;
      const ids = lowRankCounterIds(this.names.indexOf(n));
      // One slot per member, 64 elements apart at least (256 bytes: a binding offset).
      const aSlot = P === 1 ? O * r4 : alignUp(O * r4, 64);
      const bSlot = P === 1 ? r4 * I : alignUp(r4 * I, 64);
      const a = buffer(`${n}~member.a`, P * aSlot * 4);
      const bt = buffer(`${n}~member.bt`, P * bSlot * 4);
      this.#member.set(n, { ...t, lowRank: { rank, r4, a, bt, u } } as LowRankTensor);
      this.#lowRankSlots.set(n, { a: aSlot, b: bSlot });
      const base = { row0: 0, rank, noiseStride: 0 };
      records.push({
        ...base,
        tensor: ids.a,
        rows: O,
        rowStride: r4,
        kStride: 1,
        scaled: true,
        multiplier: m * step,
      });
      records.push({
        ...base,
        tensor: ids.b,
        rows: I,
        rowStride: 1,
        kStride: I,
        scaled: false,
        multiplier: 1,
      });
      outs.push({ label: `lowrank_factors.${n}.a`, out: a, slot: aSlot }, {
        label: `lowrank_factors.${n}.b`,
        out: bt,
        slot: bSlot,
      });
    }
    const memberTable = createFactorTable(gpu, "lowrank.member_factors", records);
    this.#own.push(memberTable.buffer);
    // Member z of a group reads record z of #current and writes its factors into slot z.
    const stride = paramStride(gpu);
    const member = (count: number) =>
      Array.from({ length: count }, (_, z) =>
        outs.map((x, i) =>
          lowRankFactorStep(gpu, {
            label: count > 1 ? `${x.label}.member${z}` : x.label,
            table: memberTable,
            index: i,
            params: { buffer: this.#current, offset: z * stride, size: 32 },
            out: count > 1 ? { buffer: x.out, offset: z * x.slot * 4, size: x.slot * 4 } : x.out,
            mode: "member",
          })
        )).flat();

    // The update, in groups of g noises: per group and matrix, B̃ (I, g·r4) = [B_i …], then per
    // shard of θ Ã (rows, g·r4) = [d_i·m_α/√r·A_i …] on its rows and θ_shard += Ã·B̃ᵀ. The group
    // is as large as keeps Ã and B̃ of the largest matrix within θ/64 (all n noises at once on a
    // big model; on the tiny preset 8 of 30), so the update's buffers stay a small part of θ.
    const noises = noiseCount(N, o.antithetic);
    const updated = matrices.filter((n) => o.multipliers(n).alpha !== 0);
    const update: Step[] = [];
    if (updated.length > 0) {
      const maxRows = Math.max(
        ...updated.flatMap((n) => this.theta.get(n)!.shards.map((s) => s.rows)),
      );
      const maxCols = Math.max(...updated.map((n) => this.theta.get(n)!.shape[1]));
      const thetaBytes = storedBytes(this.theta);
      const perNoise = (maxRows + maxCols) * r4 * 4;
      const group = Math.max(
        1,
        Math.min(noises, Math.floor(thetaBytes / (2 * CHUNK_FRACTION) / perNoise)),
      );
      const K = group * r4;
      const aBuf = buffer("lowrank_update.a", maxRows * K * 4, "es");
      const bBuf = buffer("lowrank_update.b", maxCols * K * 4, "es");
      const updateRecords: FactorRecord[] = [];
      const plan: { label: string; out: DeviceBuffer; matmul?: () => Step }[] = [];
      for (let noise0 = 0; noise0 < noises; noise0 += group) {
        // Every group spans `group` noise columns; past the last noise they are written as zeros.
        const span = group, G = noises > group ? `.g${noise0}` : "";
        for (const n of updated) {
          const t = this.theta.get(n)!, [, I] = t.shape;
          const ids = lowRankCounterIds(this.names.indexOf(n));
          const base = { rank, rowStride: K, noiseStride: r4, kStride: 1, noise0, span };
          updateRecords.push({
            ...base,
            tensor: ids.b,
            row0: 0,
            rows: I,
            scaled: false,
            multiplier: 1,
          });
          plan.push({ label: `lowrank_update.${n}${G}.b`, out: bBuf });
          t.shards.forEach((s, k) => {
            if (s.rows === 0) return;
            const label = `lowrank_update.${n}${t.shards.length > 1 ? `#${k}` : ""}${G}`;
            updateRecords.push({
              ...base,
              tensor: ids.a,
              row0: s.rowStart,
              rows: s.rows,
              scaled: true,
              multiplier: o.multipliers(n).alpha * step,
            });
            plan.push({
              label: `${label}.a`,
              out: aBuf,
              matmul: () =>
                matmulStep(gpu, {
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
      const updateTable = createFactorTable(gpu, "lowrank.update_factors", updateRecords);
      this.#own.push(updateTable.buffer);
      plan.forEach((p, i) => {
        update.push(lowRankFactorStep(gpu, {
          label: p.label,
          table: updateTable,
          index: i,
          params: this.#update,
          out: p.out,
          mode: "update",
          noises,
        }));
        if (p.matmul) update.push(p.matmul());
      });
    }
    return { member, update };
  }

  /** Uploads θ and builds every buffer and fixed step. */
  static async create(device: Device, options: EsEngineOptions): Promise<EsEngine> {
    const gpu = device;
    const dtype = options.storage ?? "f32";
    const theta = options.tensors ? await uploadWeights(gpu, options.tensors, { dtype }) : new Map(
      qwen3TensorSpecs(options.config).map((s) => [
        s.name,
        createTensor(gpu, s.name, [...s.shape], { dtype }),
      ]),
    );
    return new EsEngine(gpu, options, theta);
  }

  #thetaWeights: WeightLookup = (name) => {
    const t = (this.#view ?? this.theta).get(name);
    if (!t) throw new Error(`no tensor ${name}`);
    return t;
  };

  /** Uploads the held-out micro-batches once; they are the same for the whole run. */
  setHeldOut(packed: PackedBatches): void {
    this.#upload(this.#hold, packed);
    this.#holdLayout = packed.layout;
  }

  #upload(into: PackedInputs, packed: PackedBatches): void {
    const max = this.options.maxSamples * this.options.maxLen;
    if (packed.ids.length > max) {
      throw new Error(`packed batches of ${packed.ids.length} tokens exceed the engine's ${max}`);
    }
    this.device.write(into.ids, packed.ids);
    this.device.write(into.mask, packed.mask);
    this.device.write(into.target, packed.target);
  }

  /**
   * Copies one packed micro-batch into the forward's input buffers, `count` times side by side
   * (a group of batched members all score the same tokens). In a block over micro-batches the
   * source moves one micro-batch per repetition.
   */
  #copyIn(from: PackedInputs, l: MicroBatch, count = 1): Copy[] {
    const bytes = l.batch * l.seqLen * 4, at = l.offset * 4;
    const fwd = this.forward, copies: Copy[] = [];
    for (let z = 0; z < count; z++) {
      for (const name of ["ids", "mask", "target"] as const) {
        copies.push({
          op: "copy",
          label: `tokens.${name}`,
          stage: "dataset",
          role: "micro-batch in",
          src: from[name],
          srcOffset: at,
          srcStep: bytes,
          dst: fwd.buffer(name),
          dstOffset: z * bytes,
          bytes,
        });
      }
    }
    return copies;
  }

  /** Forward from layer `from` (0: from the embedding) and fitness, cached per shape. */
  #scoreSteps(
    l: { batch: number; seqLen: number },
    weights: () => WeightLookup,
    key: string,
    from = 0,
    members = 1,
  ): Step[] {
    const fwd = this.forward;
    const cacheKey = `${key}:${from}:${members}:${l.batch}x${l.seqLen}`;
    let steps = this.#scoreCache.get(cacheKey);
    if (!steps) {
      const layers = { from, to: this.config.numLayers }, w = weights();
      const fit = { batch: l.batch, seqLen: l.seqLen, weights: w };
      steps = [
        ...fwd.bodySteps(l.batch, l.seqLen, w, layers, members),
        ...staged(
          "fitness",
          this.options.fitness.steps(fwd, members > 1 ? { ...fit, members } : fit),
        ),
      ];
      this.#scoreCache.set(cacheKey, steps);
    }
    return steps;
  }
  #scoreCache = new Map<string, Step[]>();

  /**
   * The micro-batches of a layout as blocks: consecutive micro-batches of one shape whose tokens
   * follow each other run as one block repeating the first one's ops (its copies move one
   * micro-batch per repetition).
   */
  #microBlocks(
    layout: readonly MicroBatch[],
    body: (l: MicroBatch) => Program,
  ): Block[] {
    const blocks: Block[] = [];
    for (let k = 0; k < layout.length;) {
      const l = layout[k];
      let n = 1;
      while (
        k + n < layout.length && layout[k + n].batch === l.batch &&
        layout[k + n].seqLen === l.seqLen &&
        layout[k + n].offset === l.offset + n * l.batch * l.seqLen
      ) n++;
      blocks.push({
        op: "block",
        what: `micro-batch of ${l.batch}×${l.seqLen}`,
        repeat: n,
        body: body(l),
      });
      k += n;
    }
    return blocks;
  }

  /**
   * The held-out pass: per held-out micro-batch the forward over θ and the fitness, each
   * sample's R copied out in turn.
   */
  heldOutProgram(): Program {
    let at = 0;
    return this.#microBlocks(this.#holdLayout, (l) => {
      const out: Copy = {
        op: "copy",
        label: "heldout.r",
        stage: "fitness",
        role: "held-out out",
        src: this.forward.buffer("r"),
        srcOffset: 0,
        dst: this.#heldOut,
        dstOffset: at * 4,
        dstStep: l.batch * 4,
        bytes: l.batch * 4,
      };
      at += l.batch * this.#runLength(this.#holdLayout, l);
      return [
        ...this.#copyIn(this.#hold, l),
        ...this.#scoreSteps(l, () => this.#thetaWeights, "theta"),
        out,
      ];
    });
  }

  /** Micro-batches in the block that starts with `l` (see {@link #microBlocks}). */
  #runLength(layout: readonly MicroBatch[], l: MicroBatch): number {
    const k = layout.indexOf(l);
    let n = 1;
    while (
      k + n < layout.length && layout[k + n].batch === l.batch &&
      layout[k + n].seqLen === l.seqLen &&
      layout[k + n].offset === l.offset + n * l.batch * l.seqLen
    ) n++;
    return n;
  }

  /**
   * One iteration's evaluation as a program, the value the device runs: zero the totals, the
   * held-out pass when `heldOut`, the shared prefix per micro-batch, then the members in groups
   * of {@link memberBatch} (a block that repeats one group's ops, each group's records copied in
   * first), each group's forward and fitness per micro-batch, its totals accumulated. `members`
   * limits it to the slots [start, end): a distributed worker's share.
   */
  evaluationProgram(
    layout: readonly MicroBatch[],
    o: { heldOut: boolean; members?: { start: number; end: number } },
  ): Program {
    const N = this.options.population;
    const { start, end } = o.members ?? { start: 0, end: N };
    if (
      !(Number.isInteger(start) && Number.isInteger(end) && 0 <= start && start <= end && end <= N)
    ) {
      throw new Error(`members [${start}, ${end}) outside the population of ${N}`);
    }
    const program: (Op | Block)[] = [
      { op: "clear", label: "fitness.totals", stage: "fitness", role: "totals", buffer: this.#totals },
    ];
    if (o.heldOut) program.push(...this.heldOutProgram());
    const H4 = this.config.hiddenSize * 4;
    if (this.prefixLayers > 0) {
      // The shared prefix, once per micro-batch: its residual stream waits in the cache.
      program.push(...this.#microBlocks(layout, (l) => [
        ...this.#copyIn(this.#iter, l),
        ...this.prefixSteps(l),
        {
          op: "copy",
          label: "prefix.x",
          stage: "model",
          role: "prefix out",
          src: this.forward.buffer("x"),
          srcOffset: 0,
          dst: this.#prefix!,
          dstOffset: l.offset * H4,
          dstStep: l.batch * l.seqLen * H4,
          bytes: l.batch * l.seqLen * H4,
        },
      ]));
    }
    const stride = paramStride(this.device), P = this.memberBatch;
    // Members in groups of memberBatch: their records into #current, their whole tensors'
    // scratch, then per micro-batch the group's forward in the same dispatches.
    const group = (first: number, count: number, repeat: number): Block => ({
      op: "block",
      what: count === 1 ? "member" : `${count} members at once`,
      repeat,
      body: [
        {
          op: "copy",
          label: "perturb.current",
          stage: "perturb",
          role: "member records",
          src: this.#params,
          srcOffset: first * stride,
          srcStep: count * stride,
          dst: this.#current,
          dstOffset: 0,
          bytes: count * stride,
        },
        ...this.perturbSteps(count),
        ...this.#microBlocks(layout, (l) => {
          const bytes = l.batch * l.seqLen * H4;
          const prefix: Copy[] = this.prefixLayers === 0 ? [] : Array.from(
            { length: count },
            (_, z): Copy => ({
              op: "copy",
              label: "prefix.x",
              stage: "model",
              role: "prefix in",
              src: this.#prefix!,
              srcOffset: l.offset * H4,
              srcStep: bytes,
              dst: this.forward.buffer("x"),
              dstOffset: z * bytes,
              bytes,
            }),
          );
          return [...this.#copyIn(this.#iter, l, count), ...prefix, ...this.memberSteps(l, count)];
        }),
      ],
    });
    const full = Math.floor((end - start) / P), rest = (end - start) % P;
    if (full > 0) program.push(group(start, P, full));
    if (rest > 0) program.push(group(start + full * P, rest, 1));
    return program;
  }

  /**
   * Evaluates the population on the iteration's packed micro-batches (and the held-out set when
   * `heldOut`): {@link evaluationProgram} in one run and one readback. `population` is the
   * iteration's members in slot order (pipeline/strategy.ts ask). `members` limits it to the
   * slots [start, end) — a distributed worker's share; the result then holds those members'
   * fitness only, in order.
   */
  async evaluate(
    packed: PackedBatches,
    o: {
      iteration: number;
      population: readonly MemberRecord[];
      heldOut: boolean;
      members?: { start: number; end: number };
    },
  ): Promise<IterationResult> {
    const d = this.device, N = this.options.population;
    if (o.population.length !== N || o.population.some((m, j) => m.slot !== j)) {
      throw new Error(
        `evaluate: ${o.population.length} member records for a population of ${N}, in slot order`,
      );
    }
    const program = this.evaluationProgram(packed.layout, o);
    const { start, end } = o.members ?? { start: 0, end: N };
    const records = o.population.map((m) => ({
      seed: this.options.seed,
      iteration: o.iteration,
      member: m.noise,
      scale: m.scale,
      slot: m.slot,
    }));
    d.write(this.#params, encodePerturbParams(records, paramStride(d)));
    this.#upload(this.#iter, packed);
    d.run(program, `iteration ${o.iteration}`);
    const samples = packed.layout.reduce((a, l) => a + l.batch, 0);
    const slot = slotStride(d);
    const reads: ReadSource[] = [
      { buffer: this.#totals, offset: slot * start, bytes: slot * (end - start) },
    ];
    const heldCount = this.#holdLayout.reduce((a, l) => a + l.batch, 0);
    if (o.heldOut) reads.push({ buffer: this.#heldOut, offset: 0, bytes: heldCount * 4 });
    const out = await d.readMany(reads);
    const totals = new Float32Array(out[0]);
    const fitness = Array.from(
      { length: end - start },
      (_, j) => totals[(j * slot) / 4] / samples,
    );
    return {
      fitness,
      heldOut: o.heldOut ? Array.from(new Float32Array(out[1])) : undefined,
    };
  }

  /**
   * The steps of a group of `count` members (count ≤ memberBatch) on one micro-batch: their
   * forward over θ_j in the same dispatches, fitness, and each one's total += Σ R into the slot
   * its record names.
   */
  memberSteps(l: { batch: number; seqLen: number }, count = 1): Step[] {
    return [
      ...this.#scoreSteps(l, () => this.#membersWeights(count), "member", this.prefixLayers, count),
      ...Array.from({ length: count }, (_, z) => this.#accumulate(l.batch, z)),
    ];
  }

  /** The shared prefix on one micro-batch: embedding and layers [0, prefixLayers) over θ. */
  prefixSteps(l: { batch: number; seqLen: number }): Step[] {
    const key = `prefix:${l.batch}x${l.seqLen}`;
    let steps = this.#scoreCache.get(key);
    if (!steps) {
      steps = this.forward.bodySteps(l.batch, l.seqLen, this.#thetaWeights, {
        from: 0,
        to: this.prefixLayers,
      });
      this.#scoreCache.set(key, steps);
    }
    return steps;
  }

  /**
   * The steps that perturb a group of `count` members' whole tensors into their scratch (all of
   * θ in "copy" mode, the vectors otherwise, plus low-rank factors), reading the group's records
   * from the current-members buffer. Matrices in "chunks" mode are perturbed inside memberSteps.
   */
  perturbSteps(count = 1): Step[] {
    let s = this.#perturbFor.get(count);
    if (!s) {
      s = staged("perturb", this.#perturbBuild(count));
      this.#perturbFor.set(count, s);
    }
    return s;
  }

  /** The steps of the update, one pass over θ. */
  updateSteps(): Step[] {
    return this.#updateSteps;
  }

  /** Frees every buffer the engine made. */
  destroy(): void {
    this.forward.destroy();
    for (const t of [...this.theta.values(), ...this.scratch.values()]) {
      destroyTensor(this.device, t);
    }
    for (const b of this.#own) this.device.destroyBuffer(b);
  }

  #accumulateCache = new Map<string, Step>();
  #accumulate(batch: number, z: number): Step {
    const key = `${batch}:${z}`;
    let s = this.#accumulateCache.get(key);
    if (!s) {
      s = accumulateStep(this.device, {
        label: `fitness.total[member ${z}]`,
        r: this.forward.buffer("r"),
        batch,
        totals: this.#totals,
        params: this.#current,
        paramStride: paramStride(this.device),
        member: z,
        offset: z * batch,
      });
      this.#accumulateCache.set(key, s);
    }
    return s;
  }

  /** Held-out R per sample on θ alone (one run, one readback). */
  async heldOut(): Promise<number[]> {
    this.device.run(this.heldOutProgram(), "held-out");
    const n = this.#holdLayout.reduce((a, l) => a + l.batch, 0);
    return Array.from(await this.device.readF32(this.#heldOut, n));
  }

  /**
   * θ += m_α·Σ_i d_i·ε_i with d the per-noise coefficients of iteration `iteration`: queued, no
   * wait (the next run or readback is ordered after it).
   */
  update(o: { iteration: number; coefficients: ArrayLike<number> }): void {
    const n = noiseCount(this.options.population, this.options.antithetic);
    if (o.coefficients.length !== n) {
      // Unfolded per-member coefficients would silently regenerate the wrong noises.
      throw new Error(
        `update: ${o.coefficients.length} coefficients, the population draws ${n} noises; ` +
          `fold them per noise (pipeline/strategy.ts tell)`,
      );
    }
    this.device.write(
      this.#update,
      encodeUpdateParams({
        seed: this.options.seed,
        iteration: o.iteration,
        coefficients: o.coefficients,
      }),
    );
    this.device.run(this.#updateSteps, `update ${o.iteration}`);
  }

  /** θ read back one tensor at a time, in HF order. */
  weights(): AsyncGenerator<TensorData> {
    return downloadWeights(this.device, this.theta, this.names);
  }
}

/** One packed micro-batch: where its tokens start and its shape (pipeline/data.ts). */
type MicroBatch = PackedBatches["layout"][number];
