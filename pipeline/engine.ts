/**
 * The ES engine: θ on a device, and one iteration of EA4LLM (Algorithm 2) as one program
 * (kernels/device.ts) run in one go with one readback, on WebGPU or the CPU backend alike.
 *
 * Legend: N = population, M = samples per iteration, B = micro-batch, T = tokens, P = parameters.
 *
 *   per iteration t ({@link EsEngine.evaluationProgram}; the records come from the strategy's ask):
 *     write the perturb records (seed, t, noise index, ±σ_t and fitness slot of each member)
 *     write the iteration's packed tokens (all micro-batches, one upload)
 *     [held-out: forward over θ for each held-out micro-batch → R per sample]
 *     block over member groups (one member, or memberBatch at once):   θ is only read
 *       copy the group's records to the current-members buffer
 *       form the group's whole tensors (vectors; all of θ with scratch: copy; low-rank factors)
 *       block over micro-batches: copy its tokens in, forward(θ_j), fitness, total[slot] += Σ R
 *     read back total[0..N) (and held-out R): the iteration's only round trip
 *   then the strategy's tell: F_j = total_j/M, w = shape(F), the per-noise coefficients d_i,
 *   and the update program: θ += Σ_i d_i·m_α·ε_i, the noise regenerated, one pass over θ.
 *
 * Where a member's perturbed weights live — row chunks formed where the forward reads them
 * (default), a whole perturbed copy, or θ plus low-rank factors (EGGROLL) — is the scratch
 * mode's business (pipeline/scratch.ts); the engine builds the program around it. Memory: θ, the
 * member's scratch (~θ/16 with chunks), the activation workspace of one micro-batch per batched
 * member, and the iteration's tokens.
 *
 * bf16 storage (`storage`): θ is read only through perturb kernels that widen it to f32 (the
 * unperturbed forward through the same chunks at scale 0), and the update rounds stochastically.
 *
 * @module
 */
import {
  type Block,
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
  type DeviceTensor,
  type StorageDtype,
} from "../kernels/tensor.ts";
import type { Step } from "../kernels/program.ts";
import { accumulateStep, slotStride } from "../kernels/accumulate.ts";
import {
  createUpdateParams,
  encodePerturbParams,
  encodeUpdateParams,
  paramStride,
} from "../kernels/es_update.ts";
import type { Qwen3Config } from "../model/config.ts";
import { qwen3TensorSpecs } from "../model/weights.ts";
import { downloadWeights, uploadWeights } from "../model/device_weights.ts";
import { Qwen3Forward, type WeightLookup } from "../model/forward.ts";
import type { TensorData, TensorStream } from "../model/safetensors.ts";
import type { PackedBatches } from "./data.ts";
import { type MemberRecord, noiseCount } from "./es.ts";
import {
  chunkScratch,
  copyScratch,
  lowRankScratch,
  type ScratchContext,
  type ScratchMode,
  storedBytes,
} from "./scratch.ts";
import { UserError } from "../errors.ts";
import { stageType } from "./spec.ts";
import "./stages/mod.ts";
import type { EsStrategy } from "./strategy.ts";
import type { FitnessImpl } from "./stages/types.ts";

/**
 * Options of {@link EsEngine.create} for an engine composed in code: the strategy
 * (pipeline/strategy.ts) decides the population, pairing, group multipliers and rank.
 */
export type StrategyEngineOptions =
  & Omit<EsEngineOptions, "population" | "antithetic" | "multipliers" | "lowRank" | "fitness">
  & {
    strategy: Pick<EsStrategy, "engineOptions">;
    /** Default: the paper's log-likelihood (fitness type log_likelihood). */
    fitness?: FitnessImpl;
  };

/** Options of {@link EsEngine.create}. */
export interface EsEngineOptions {
  /** The model's architecture. */
  config: Qwen3Config;
  /** The initial θ, one tensor at a time; absent when only planning (θ is allocated, not filled). */
  tensors?: TensorStream;
  /** The run seed: every member's noise derives from it and the iteration. */
  seed: number;
  /** N: members per iteration. */
  population: number;
  /** Mirrored pairs ±ε (pipeline/es.ts noiseMember). */
  antithetic: boolean;
  /** Most samples per iteration (M) and per held-out pass. */
  maxSamples: number;
  /** Samples per forward pass. */
  microBatch: number;
  /** Tokens per sample at most. */
  maxLen: number;
  /** The fitness stage's implementation (pipeline/stages/types.ts). */
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
  /** Where θ lives and the programs run. */
  readonly device: Device;
  /** The model's architecture. */
  readonly config: Qwen3Config;
  /** The options it was made with (a strategy's decisions filled in). */
  readonly options: EsEngineOptions;
  /** θ's tensor names in HF order. */
  readonly names: string[];
  /**
   * θ on the device, by name.
   * @internal
   */
  readonly theta: Map<string, DeviceTensor>;
  /**
   * The member's tensors formed whole, by θ's name: all of θ with scratch "copy", the vectors
   * otherwise (matrices are formed in chunks where read, or corrected by low-rank factors).
   * @internal
   */
  readonly scratch: Map<string, DeviceTensor>;
  /**
   * The forward whose buffers every program reads and writes.
   * @internal
   */
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
  /** Members evaluated at once ({@link EsEngineOptions.memberBatch}, where it applies). */
  readonly memberBatch: number;
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

    // The scratch mode builds once what the perturb and update steps need: everything that
    // changes per member or per iteration lives in the params buffers, written before each run.
    const ctx: ScratchContext = {
      device,
      config: options.config,
      names: this.names,
      theta,
      population: N,
      antithetic: options.antithetic,
      rows: options.microBatch * options.maxLen,
      memberBatch: P,
      multipliers: options.multipliers,
      current: this.#current,
      zero: this.#zero,
      updateParams: this.#update,
      chunkBytes: options.chunkBytes,
      own: (b) => {
        this.#own.push(b);
        return b;
      },
    };
    this.#scratch = lowRank
      ? lowRankScratch(ctx, lowRank.rank)
      : chunked
      ? chunkScratch(ctx)
      : copyScratch(ctx);
    this.scratch = new Map(this.#scratch.tensors.map((t) => [t.name.replace(/~member$/, ""), t]));
    // The forward reads θ unperturbed as the scratch mode does (bf16 θ widened where read).
    this.forward = new Qwen3Forward(gpu, options.config, this.#scratch.theta, {
      maxBatch: P * options.microBatch,
      maxSeqLen: options.maxLen,
    });
  }

  /** The scratch mode: what the forwards read, and the perturb and update steps. */
  #scratch: ScratchMode;

  /**
   * Uploads θ and builds every buffer and fixed step. Given a `strategy`
   * ({@link StrategyEngineOptions}), the population, pairing, group multipliers and rank come
   * from it, and the fitness defaults to the paper's log-likelihood.
   */
  static async create(
    device: Device,
    spec: EsEngineOptions | StrategyEngineOptions,
  ): Promise<EsEngine> {
    const gpu = device;
    const options: EsEngineOptions = "strategy" in spec
      ? {
        ...spec,
        ...spec.strategy.engineOptions(),
        fitness: spec.fitness ?? stageType("fitness", "log_likelihood")!.impl!,
      }
      : spec;
    const dtype = options.storage ?? "f32";
    const theta = options.tensors ? await uploadWeights(gpu, options.tensors, { dtype }) : new Map(
      qwen3TensorSpecs(options.config).map((s) => [
        s.name,
        createTensor(gpu, s.name, [...s.shape], { dtype }),
      ]),
    );
    return new EsEngine(gpu, options, theta);
  }

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
   * @internal
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
        ...this.#scoreSteps(l, () => this.#scratch.theta, "theta"),
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
   * @internal
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
      {
        op: "clear",
        label: "fitness.totals",
        stage: "fitness",
        role: "totals",
        buffer: this.#totals,
      },
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
    if (full > 0) program.push(this.#memberGroups.mark(group(start, P, full), P));
    if (rest > 0) program.push(this.#memberGroups.mark(group(start + full * P, rest, 1), rest));
    return program;
  }

  /** The member-group blocks of the programs {@link evaluationProgram} built (for progress). */
  #memberGroups = new MemberGroups();

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
      /** Progress within the iteration: see {@link MemberProgress}. */
      onProgress?: MemberProgress;
    },
  ): Promise<IterationResult> {
    const d = this.device;
    const program = this.evaluationProgram(packed.layout, o);
    const { start, end } = this.#writeRecords(o);
    this.#upload(this.#iter, packed);
    const progress = o.onProgress
      ? this.#memberGroups.runInPieces(d, program, `iteration ${o.iteration}`, o.onProgress)
      : d.run(program, `iteration ${o.iteration}`);
    const samples = packed.layout.reduce((a, l) => a + l.batch, 0);
    const slot = slotStride(d);
    const reads: ReadSource[] = [
      { buffer: this.#totals, offset: slot * start, bytes: slot * (end - start) },
    ];
    const heldCount = this.#holdLayout.reduce((a, l) => a + l.batch, 0);
    if (o.heldOut) reads.push({ buffer: this.#heldOut, offset: 0, bytes: heldCount * 4 });
    const out = await d.readMany(reads);
    await progress;
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

  /** Checks the population's records and writes them to the perturb table; the slot range. */
  #writeRecords(o: {
    iteration: number;
    population: readonly MemberRecord[];
    members?: { start: number; end: number };
  }): { start: number; end: number } {
    const d = this.device, N = this.options.population;
    if (o.population.length !== N || o.population.some((m, j) => m.slot !== j)) {
      throw new Error(
        `evaluate: ${o.population.length} member records for a population of ${N}, in slot order`,
      );
    }
    const records = o.population.map((m) => ({
      seed: this.options.seed,
      iteration: o.iteration,
      member: m.noise,
      scale: m.scale,
      slot: m.slot,
    }));
    d.write(this.#params, encodePerturbParams(records, paramStride(d)));
    return o.members ?? { start: 0, end: N };
  }

  /**
   * Evaluates the population with a fitness that needs the host between its steps (a reward on
   * generated text, whose next token depends on the last): for each group of members in turn,
   * its records are copied in and its whole tensors formed, then `score` runs its own programs
   * reading the group's weights through `weights` (model/forward.ts WeightLookup; member z of the
   * group in block z of batched activations) and returns one fitness per member of the group.
   * `members` limits it to the slots [start, end), as in {@link evaluate}.
   * @internal
   */
  async evaluateWith(
    o: {
      iteration: number;
      population: readonly MemberRecord[];
      members?: { start: number; end: number };
    },
    score: (group: { first: number; count: number; weights: WeightLookup }) => Promise<number[]>,
  ): Promise<IterationResult> {
    const { start, end } = this.#writeRecords(o);
    const stride = paramStride(this.device), P = this.memberBatch, fitness: number[] = [];
    for (let first = start; first < end; first += P) {
      const count = Math.min(P, end - first);
      this.device.run([
        {
          op: "copy",
          label: "perturb.current",
          stage: "perturb",
          role: "member records",
          src: this.#params,
          srcOffset: first * stride,
          dst: this.#current,
          dstOffset: 0,
          bytes: count * stride,
        },
        ...this.perturbSteps(count),
      ], `iteration ${o.iteration} members ${first}..${first + count - 1}`);
      const got = await score({ first, count, weights: this.#scratch.members(count) });
      if (got.length !== count) {
        throw new Error(`a group of ${count} members scored ${got.length} fitness values`);
      }
      fitness.push(...got);
    }
    return { fitness };
  }

  /**
   * How the unperturbed forward reads θ (the generation of θ itself).
   * @internal
   */
  get thetaWeights(): WeightLookup {
    return this.#scratch.theta;
  }

  /**
   * The steps of a group of `count` members (count ≤ memberBatch) on one micro-batch: their
   * forward over θ_j in the same dispatches, fitness, and each one's total += Σ R into the slot
   * its record names.
   * @internal
   */
  memberSteps(l: { batch: number; seqLen: number }, count = 1): Step[] {
    return [
      ...this.#scoreSteps(
        l,
        () => this.#scratch.members(count),
        "member",
        this.prefixLayers,
        count,
      ),
      ...Array.from({ length: count }, (_, z) => this.#accumulate(l.batch, z)),
    ];
  }

  /**
   * The shared prefix on one micro-batch: embedding and layers [0, prefixLayers) over θ.
   * @internal
   */
  prefixSteps(l: { batch: number; seqLen: number }): Step[] {
    const key = `prefix:${l.batch}x${l.seqLen}`;
    let steps = this.#scoreCache.get(key);
    if (!steps) {
      steps = this.forward.bodySteps(l.batch, l.seqLen, this.#scratch.theta, {
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
   * @internal
   */
  perturbSteps(count = 1): Step[] {
    let s = this.#perturbFor.get(count);
    if (!s) {
      s = staged("perturb", this.#scratch.perturb(count));
      this.#perturbFor.set(count, s);
    }
    return s;
  }

  /**
   * The steps of the update, one pass over θ.
   * @internal
   */
  updateSteps(): Step[] {
    return staged("update", this.#scratch.update);
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
    this.device.run(this.updateSteps(), `update ${o.iteration}`);
  }

  /** θ read back one tensor at a time, in HF order. */
  weights(): AsyncGenerator<TensorData> {
    return downloadWeights(this.device, this.theta, this.names);
  }
}

/** One packed micro-batch: where its tokens start and its shape (pipeline/data.ts). */
type MicroBatch = PackedBatches["layout"][number];

// ---- progress within an iteration (train's "iteration 0: member 7/16") ----------------------

/**
 * Called as an iteration's evaluation advances: `done` of `of` members scored (0 once the
 * held-out pass and the shared prefix are done). On the CPU backend each call comes right after
 * the work it counts; on WebGPU when the queue has reached it.
 */
export type MemberProgress = (p: { done: number; of: number }) => void;

/**
 * The member-group blocks of evaluation programs, and running such a program in pieces: all
 * that comes before the members, then one repetition of a group block at a time, with a
 * progress call after each. The pieces expand to the very ops of the whole program, in order
 * (tests/engine_progress_test.ts), so the plan stays the program that runs; only the number of
 * runs (submits on WebGPU) changes.
 */
class MemberGroups {
  /** Each group block and the members one repetition of it scores. */
  #blocks = new WeakMap<Block, number>();

  mark(block: Block, members: number): Block {
    this.#blocks.set(block, members);
    return block;
  }

  /**
   * Runs `program` piece by piece. On WebGPU nothing waits: each piece's completion is watched
   * through onSubmittedWorkDone, so the queue stays full; the promise settles when all have.
   */
  runInPieces(
    device: Device,
    program: Program,
    label: string,
    report: MemberProgress,
  ): Promise<void> {
    const pieces: { program: Program; members: number }[] = [{ program: [], members: 0 }];
    for (const op of program) {
      if (op.op !== "block" || !this.#blocks.has(op)) {
        (pieces[0].program as (Op | Block)[]).push(op);
        continue;
      }
      const members = this.#blocks.get(op)!;
      for (let i = 0; i < op.repeat; i++) pieces.push({ program: [repetition(op, i)], members });
    }
    const of = pieces.reduce((a, p) => a + p.members, 0);
    const watched: Promise<void>[] = [];
    let done = 0;
    for (const piece of pieces) {
      device.run(piece.program, label);
      done += piece.members;
      const p = { done, of };
      if (device.backend === "cpu") report(p);
      else watched.push(device.finish().then(() => report(p), () => {}));
    }
    return Promise.all(watched).then(() => {});
  }
}

/**
 * Repetition i of a block as a block of its own: the copies directly in its body moved by
 * i·step, as {@link Block} defines (nested blocks move their own copies).
 */
function repetition(block: Block, i: number): Block {
  return {
    op: "block",
    what: block.what,
    repeat: 1,
    body: block.body.map((op) =>
      op.op === "copy" && (op.srcStep || op.dstStep)
        ? {
          ...op,
          srcOffset: op.srcOffset + i * (op.srcStep ?? 0),
          dstOffset: op.dstOffset + i * (op.dstStep ?? 0),
          srcStep: undefined,
          dstStep: undefined,
        }
        : op
    ),
  };
}
