/**
 * The native CPU device: the same programs the WebGPU device runs (kernels/device.ts), each
 * dispatch executed by the native kernel of its name (kernels/cpu/native.ts, esflow.c), matmuls
 * in the system BLAS. Buffers are host memory (ArrayBuffers handed to the kernels without a
 * copy); a run executes at once, in order, on every core.
 *
 * A dispatch is bound to its kernel once, the first time it runs: its typed views and constant
 * arguments are made then and reused every iteration, so a step costs one native call. Custom
 * kernels (a stage's own WGSL) run here through their {@link Dispatch.cpu} twin.
 *
 * Tests: tests/backends_test.ts and the engine tests run on both devices (tests/helpers.ts BACKENDS).
 *
 * @module
 */
import {
  type Binding,
  bindingRange,
  bufferBytes,
  type BufferPurpose,
  checkBufferSize,
  type Device,
  type DeviceBuffer,
  DeviceError,
  type Dispatch,
  type Program,
  type ReadSource,
  shardBytesFor,
} from "../device.ts";
import { CPU_LIMITS, cpuModel, cpuThreads } from "./limits.ts";
import { offsetOf, PERTURB } from "../records.ts";
import { loadNative, type Native } from "./native.ts";

/** A buffer of the CPU device: host memory. */
class CpuBuffer implements DeviceBuffer {
  readonly bytes: Uint8Array;
  constructor(
    readonly label: string,
    readonly size: number,
    readonly purpose: BufferPurpose,
  ) {
    this.bytes = new Uint8Array(size);
  }
}

/** Options of {@link acquireCpu}. */
export interface CpuOptions {
  /** Largest bytes of one tensor shard (tests force small shards). */
  shardBytes?: number;
  /** Threads of the BLAS and of the native kernels. Default ESFLOW_THREADS, else every core. */
  threads?: number;
}

/** Builds (or takes from the cache) and loads the native kernels, and makes a CPU device. */
export async function acquireCpu(options: CpuOptions = {}): Promise<CpuDevice> {
  const threads = cpuThreads(options.threads);
  const native = await loadNative({ threads });
  return new CpuDevice(native, shardBytesFor(CPU_LIMITS, options.shardBytes));
}

/** The CPU device: native kernels over host buffers. */
export class CpuDevice implements Device {
  readonly backend = "cpu" as const;
  readonly executes = true;
  readonly limits = CPU_LIMITS;
  readonly shardBytes: number;
  readonly native: Native;
  #live = 0;
  #peak = 0;
  #ledger = new Set<CpuBuffer>();
  /**
   * When set, every dispatch's wall milliseconds are added here by kernel (and variant): what
   * `deno task bench` reports per kernel on the CPU.
   */
  profile: Map<string, number> | null = null;
  /** Each dispatch bound to its kernel: one closure per dispatch, made on its first run. */
  #bound = new WeakMap<Dispatch, () => void>();

  constructor(native: Native, shardBytes: number) {
    this.native = native;
    this.shardBytes = shardBytes;
  }

  /** "AMD EPYC, 2 threads, OpenBLAS 0.3.21": the CPU, its threads and the BLAS in use. */
  get name(): string {
    const t = this.native.threads;
    return `${cpuModel()}, ${t} thread${t === 1 ? "" : "s"}, ${this.native.blas.config}`;
  }

  /** Threads of the BLAS and the native kernels; setting it takes effect at the next call. */
  get threads(): number {
    return this.native.threads;
  }
  set threads(n: number) {
    this.native.setThreads(n);
  }

  createBuffer(label: string, bytes: number, purpose: BufferPurpose): DeviceBuffer {
    const size = bufferBytes(bytes);
    checkBufferSize(label, size, this.limits, this.name);
    const b = new CpuBuffer(label, size, purpose);
    this.#ledger.add(b);
    this.#live += size;
    this.#peak = Math.max(this.#peak, this.#live);
    return b;
  }

  destroyBuffer(buffer: DeviceBuffer): void {
    const b = buffer as CpuBuffer;
    if (!this.#ledger.delete(b)) return;
    this.#live -= b.size;
  }

  /** The host bytes of a buffer of this device. */
  bytes(buffer: DeviceBuffer): Uint8Array {
    if (!(buffer instanceof CpuBuffer)) {
      throw new DeviceError(`buffer ${buffer.label} does not belong to the CPU device`);
    }
    return buffer.bytes;
  }

  write(buffer: DeviceBuffer, data: ArrayBufferView, offset = 0): void {
    const dst = this.bytes(buffer);
    if (offset + data.byteLength > dst.byteLength) {
      throw new DeviceError(
        `write of ${data.byteLength} bytes at ${offset} into ${buffer.label} (${buffer.size} bytes)`,
      );
    }
    dst.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), offset);
  }

  run(program: Program): void {
    const walk = (ops: Program, step: number) => {
      for (const op of ops) {
        if (op.op === "block") {
          for (let i = 0; i < op.repeat; i++) walk(op.body, i);
        } else if (op.op === "dispatch") {
          const [x, y, z] = op.workgroups;
          if (x * y * z === 0) continue;
          let call = this.#bound.get(op);
          if (!call) {
            call = this.#bind(op);
            this.#bound.set(op, call);
          }
          if (this.profile) {
            const t0 = performance.now();
            call();
            const key = op.kernel + (op.variant ? `.${op.variant}` : "");
            this.profile.set(key, (this.profile.get(key) ?? 0) + performance.now() - t0);
          } else call();
        } else if (op.op === "copy") {
          if (op.bytes === 0) continue;
          const src = this.bytes(op.src), dst = this.bytes(op.dst);
          const at = op.srcOffset + step * (op.srcStep ?? 0);
          dst.set(src.subarray(at, at + op.bytes), op.dstOffset + step * (op.dstStep ?? 0));
        } else {
          this.bytes(op.buffer).fill(0);
        }
      }
    };
    walk(program, 0);
  }

  readMany(sources: readonly ReadSource[]): Promise<ArrayBuffer[]> {
    return Promise.resolve(sources.map((s) => {
      const at = s.offset ?? 0;
      return this.bytes(s.buffer).slice(at, at + s.bytes).buffer;
    }));
  }

  async readF32(buffer: DeviceBuffer, count: number, offset = 0): Promise<Float32Array> {
    const [b] = await this.readMany([{ buffer, offset, bytes: count * 4 }]);
    return new Float32Array(b);
  }

  finish(): Promise<void> {
    return Promise.resolve();
  }

  async scoped<T>(context: string, fn: () => T | Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      if (e instanceof DeviceError) throw new DeviceError(`${context}: ${e.message}`);
      throw e;
    }
  }

  get memory(): { live: number; peak: number } {
    return { live: this.#live, peak: this.#peak };
  }

  resetPeak(): void {
    this.#peak = this.#live;
  }

  allocations(): { label: string; bytes: number; purpose: BufferPurpose }[] {
    return [...this.#ledger].map((b) => ({ label: b.label, bytes: b.size, purpose: b.purpose }));
  }

  destroy(): void {
    this.#ledger.clear();
    this.#live = 0;
  }

  /** A typed view of a binding's bytes. */
  #view<T extends ArrayBufferView>(
    b: Binding,
    make: (buffer: ArrayBuffer, offset: number, length: number) => T,
    width: number,
  ): T {
    const r = bindingRange(b);
    const bytes = this.bytes(r.buffer);
    return make(
      bytes.buffer as ArrayBuffer,
      bytes.byteOffset + r.offset,
      Math.floor(r.size / width),
    );
  }

  #f32(b: Binding): Float32Array {
    return this.#view(b, (a, o, n) => new Float32Array(a, o, n), 4);
  }

  #u32(b: Binding): Uint32Array {
    return this.#view(b, (a, o, n) => new Uint32Array(a, o, n), 4);
  }

  /** The native call that runs `d`, its views and constant arguments made once. */
  #bind(d: Dispatch): () => void {
    const n = this.native, c = d.consts, b = d.bindings;
    const num = (k: string) => {
      const v = c[k];
      if (typeof v !== "number") throw new DeviceError(`${d.label}: constant ${k} is missing`);
      return v;
    };
    const flag = (k: string) => c[k] === true;
    const members = d.workgroups[2];
    switch (d.kernel) {
      case "matmul": {
        const args = {
          x: this.#f32(b[0]),
          w: this.#f32(b[1]),
          bias: flag("HAS_BIAS") ? this.#f32(b[2]) : undefined,
          out: this.#f32(b[3]),
          m: num("M"),
          n: num("N"),
          k: num("K4") * 4,
          wRow: num("W_ROW"),
          biasOff: num("BIAS_OFF"),
          outStride: num("OUT_STRIDE"),
          outCol: num("OUT_COL"),
          accumulate: flag("ACCUMULATE"),
          members,
          xMs: num("X_MS4") * 4,
          wMs: num("W_MS4") * 4,
          outMs: num("OUT_MS"),
          bMs: num("B_MS"),
        };
        return () => n.matmul(args);
      }
      case "matmul_swiglu": {
        const args = {
          x: this.#f32(b[0]),
          wg: this.#f32(b[1]),
          wu: this.#f32(b[4]),
          out: this.#f32(b[3]),
          m: num("M"),
          n: num("N"),
          k: num("K4") * 4,
          gRow: num("W_ROW"),
          uRow: num("U_ROW"),
          outStride: num("OUT_STRIDE"),
          outCol: num("OUT_COL"),
          members,
          xMs: num("X_MS4") * 4,
          wMs: num("W_MS4") * 4,
          outMs: num("OUT_MS"),
        };
        return () => n.matmulSwiglu(args);
      }
      case "rmsnorm": {
        const args = {
          x: this.#f32(b[0]),
          w: this.#f32(b[1]),
          y: this.#f32(b[2]),
          rows: num("R"),
          dim: num("D"),
          eps: num("EPS"),
          rowsPerMember: num("RM"),
          wMs: num("W_MS4") * 4,
        };
        return () => n.rmsnorm(args);
      }
      case "embedding": {
        const args = {
          ids: this.#u32(b[0]),
          table: this.#f32(b[1]),
          x: this.#f32(b[2]),
          rows: num("R"),
          hidden: num("H"),
          rowStart: num("ROW_START"),
          tableRows: num("ROWS"),
          rowsPerMember: num("RM"),
          tableMs: num("T_MS4") * 4,
        };
        return () => n.embedding(args);
      }
      case "qk_norm_rope": {
        const args = {
          x: this.#f32(b[0]),
          w: this.#f32(b[1]),
          cos: this.#f32(b[2]),
          sin: this.#f32(b[3]),
          rows: num("R"),
          seqLen: num("T"),
          heads: num("NH"),
          headDim: num("D"),
          eps: num("EPS"),
          rowsPerMember: num("RM"),
          wMs: num("W_MS"),
        };
        return () => n.qkNormRope(args);
      }
      case "attention": {
        const args = {
          q: this.#f32(b[0]),
          k: this.#f32(b[1]),
          v: this.#f32(b[2]),
          mask: this.#u32(b[3]),
          out: this.#f32(b[4]),
          batch: num("B"),
          seqLen: num("T"),
          heads: num("NH"),
          kvHeads: num("NKV"),
          headDim: num("D"),
          scale: Math.fround(num("SCALE")),
        };
        return () => n.attention(args);
      }
      case "swiglu": {
        const args = { gate: this.#f32(b[0]), up: this.#f32(b[1]), n: num("N4") * 4 };
        return () => n.swiglu(args);
      }
      case "logsumexp_chunk": {
        const args = {
          logits: this.#f32(b[0]),
          targets: this.#u32(b[1]),
          state: this.#f32(b[2]),
          rows: num("R"),
          width: num("C"),
          start: num("C0"),
          first: flag("FIRST"),
        };
        return () => n.logsumexpChunk(args);
      }
      case "log_likelihood": {
        const args = {
          targets: this.#u32(b[0]),
          state: this.#f32(b[1]),
          r: this.#f32(b[2]),
          batch: num("B"),
          seqLen: num("T"),
          compact: flag("COMPACT"),
        };
        return () => n.logLikelihood(args);
      }
      case "accumulate": {
        // The slot is a field of the member's perturb record, read when the step runs.
        const r = this.#f32(b[0]), totals = this.#f32(b[1]), params = this.#u32(b[2]);
        const at = num("MEMBER") * num("PARAM_WORDS") + offsetOf(PERTURB, "slot");
        const slotWords = num("SLOT_WORDS");
        const batch = num("B"), offset = num("R_OFF");
        return () => {
          const slot = params[at] * slotWords;
          n.accumulate({ r, total: totals.subarray(slot, slot + 1), batch, offset });
        };
      }
      case "perturb": {
        const bf16 = d.variant === "bf16";
        const args = {
          shard: this.#u32(b[0]),
          params: this.#u32(b[1]),
          paramWords: num("PARAM_WORDS"),
          theta: bf16 ? this.#u32(b[2]) : this.#f32(b[2]),
          bf16,
          out: this.#f32(b[3]),
          members,
        };
        return () => n.perturb(args);
      }
      case "es_update": {
        const bf16 = d.variant?.includes("bf16") ?? false;
        const injected = d.variant?.includes("injected") ?? false;
        const args = {
          shard: this.#u32(b[0]),
          update: this.#u32(b[1]),
          theta: bf16 ? this.#u32(b[2]) : this.#f32(b[2]),
          bf16,
          injected: injected ? this.#f32(b[3]) : undefined,
        };
        return () => n.esUpdate(args);
      }
      case "lowrank_factors": {
        const args = {
          factor: this.#u32(b[0]),
          params: this.#u32(b[1]),
          mode: d.variant === "update" ? "update" as const : "member" as const,
          out: this.#f32(b[2]),
        };
        return () => n.lowrankFactors(args);
      }
      case "lowrank_embed": {
        const args = {
          ids: this.#u32(b[0]),
          a: this.#f32(b[1]),
          bt: this.#f32(b[2]),
          x: this.#f32(b[3]),
          rows: num("R"),
          hidden: num("H"),
          r4: num("R4"),
          rowsPerMember: num("RM"),
          aMs: num("A_MS"),
          bMs: num("B_MS4") * 4,
        };
        return () => n.lowrankEmbed(args);
      }
      case "qk_norm_rope_at": {
        const rows = num("R"), tn = num("TN");
        const args = {
          x: this.#f32(b[0]),
          w: this.#f32(b[1]),
          cos: this.#f32(b[2]),
          sin: this.#f32(b[3]),
          pos: this.#u32(b[4]),
          sequences: rows / tn,
          newTokens: tn,
          heads: num("NH"),
          headDim: num("D"),
          positions: num("P"),
          eps: num("EPS"),
          rowsPerMember: num("RM"),
          wMs: num("W_MS"),
        };
        return () => n.qkNormRopeAt(args);
      }
      case "kv_cache_write": {
        const rows = num("R"), tn = num("TN");
        const args = {
          k: this.#f32(b[0]),
          v: this.#f32(b[1]),
          pos: this.#u32(b[2]),
          kc: this.#f32(b[3]),
          vc: this.#f32(b[4]),
          sequences: rows / tn,
          newTokens: tn,
          slots: num("SLOTS"),
          width: num("E4") * 4,
        };
        return () => n.kvCacheWrite(args);
      }
      case "attention_cache": {
        const rows = num("R"), tn = num("TN");
        const args = {
          q: this.#f32(b[0]),
          kc: this.#f32(b[1]),
          vc: this.#f32(b[2]),
          pos: this.#u32(b[3]),
          out: this.#f32(b[4]),
          sequences: rows / tn,
          newTokens: tn,
          heads: num("NH"),
          kvHeads: num("NKV"),
          headDim: num("D"),
          slots: num("SLOTS"),
          scale: Math.fround(num("SCALE")),
        };
        return () => n.attentionCache(args);
      }
      case "checksum": {
        const args = {
          x: this.#u32(b[0]),
          n: num("N"),
          base: num("BASE"),
          sums: this.#u32(b[1]),
        };
        return () => n.checksum(args);
      }
      case "sum_squares": {
        const args = {
          x: this.#u32(b[0]),
          n: num("N"),
          per: num("PER") * num("WG"),
          bf16: flag("BF16"),
          partials: this.#f32(b[1]),
        };
        return () => n.sumSquares(args);
      }
    }
    if (d.cpu) {
      const views = d.bindings.map((x) => {
        const r = bindingRange(x);
        return new DataView(
          this.bytes(r.buffer).buffer,
          this.bytes(r.buffer).byteOffset + r.offset,
          r.size,
        );
      });
      const cpu = d.cpu;
      return () => cpu(views);
    }
    throw new DeviceError(
      `${d.label}: kernel ${d.kernel} has no CPU implementation; give its dispatch a \`cpu\` ` +
        `function or run with --backend webgpu`,
    );
  }
}
