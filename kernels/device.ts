/**
 * The seam between what esflow computes and where it runs: a {@link Device} holds buffers and
 * executes {@link Op}s, and every kernel wrapper builds its ops as plain data against one.
 *
 * An op names its kernel, the compile-time constants the kernel is specialised with, the byte
 * ranges of buffers it binds, and its launch grid; a dispatch also carries its WGSL source (made
 * only when a WebGPU device first encodes it). Two devices run the same ops:
 *
 * - `webgpu` (kernels/runtime.ts): WGSL on Deno's WebGPU, the path for every real GPU; lavapipe
 *   is its test adapter on a CPU.
 * - `cpu` (kernels/cpu/device.ts): the same kernels in native code, matmuls in the system BLAS.
 *
 * A third, {@link planDevice}, declares buffers and runs nothing: `deno task plan` builds the
 * very ops a run executes against it, to print them and count their bytes before anything is
 * allocated.
 *
 * Every op records which pipeline stage placed it (`stage`) and what it does there (`role`), and
 * every buffer what it holds (`purpose`), each set where it is created.
 *
 * Tests: tests/program_test.ts (the planned program is the executed one).
 *
 * @module
 */

/** Which executor a device is. */
export type Backend = "webgpu" | "cpu";

/** What a buffer holds, set by the code that creates it. */
export type BufferPurpose =
  /** θ itself. */
  | "weights"
  /** A member's perturbed tensors: its vectors, the chunks its matrices are formed in, factors. */
  | "scratch"
  /** The forward's workspace: residual stream, projections, logits chunk, fitness state. */
  | "activations"
  /** The packed token ids, masks and targets of an iteration or of the held-out set. */
  | "tokens"
  /** ES bookkeeping: perturb and update records, shard tables, fitness totals, checksums. */
  | "es";

/** The pipeline stage an op belongs to. */
export type Stage = "dataset" | "perturb" | "model" | "fitness" | "update";

/** A device's limits that builders plan with (bytes unless named otherwise). */
export interface DeviceLimits {
  /** Bytes one storage binding may span. */
  maxStorageBufferBindingSize: number;
  /** Bytes of one buffer. */
  maxBufferSize: number;
  /** Workgroups along one dimension of a launch grid. */
  maxComputeWorkgroupsPerDimension: number;
  /** Invocations of one workgroup. */
  maxComputeInvocationsPerWorkgroup: number;
  /** Bytes of a workgroup's shared memory. */
  maxComputeWorkgroupStorageSize: number;
  /** Storage buffers one kernel may bind. */
  maxStorageBuffersPerShaderStage: number;
  /** Alignment in bytes of a binding's offset. */
  minStorageBufferOffsetAlignment: number;
}

/** WebGPU's default limits, for planning with no adapter at hand. */
export const DEFAULT_LIMITS: DeviceLimits = {
  maxStorageBufferBindingSize: 128 << 20,
  maxBufferSize: 256 << 20,
  maxComputeWorkgroupsPerDimension: 65535,
  maxComputeInvocationsPerWorkgroup: 256,
  maxComputeWorkgroupStorageSize: 16384,
  maxStorageBuffersPerShaderStage: 8,
  minStorageBufferOffsetAlignment: 256,
};

/** A buffer on a device: its bytes (a multiple of 16) and what it holds. */
export interface DeviceBuffer {
  readonly label: string;
  readonly size: number;
  readonly purpose: BufferPurpose;
}

/** A buffer bound whole, or a byte range of one. */
export type Binding = DeviceBuffer | { buffer: DeviceBuffer; offset?: number; size?: number };

/** The WGSL a dispatch runs: made on first use, cached by the device by its text. */
export interface WgslSource {
  /** Pipeline label for error messages, e.g. "matmul 32x16 2048x128x384". */
  label: string;
  code: () => string;
  entryPoint?: string;
}

/** Fields every op has. */
interface OpBase {
  /** What this op computes, e.g. "L3.self_attn.q_proj". */
  label: string;
  /** The stage whose builder placed it; absent until the builder sets it. */
  stage?: Stage;
  /** What it does within the stage, e.g. "projection", "form chunk", "lm_head". */
  role?: string;
}

/** One kernel launch. */
export interface Dispatch extends OpBase {
  op: "dispatch";
  /** The kernel's name, e.g. "matmul"; with `variant` it selects the native implementation. */
  kernel: string;
  /** A variant of the kernel's source, e.g. "bf16" for θ stored in bf16. */
  variant?: string;
  /** Compile-time constants of the kernel (the WGSL `const`s; the CPU kernel's arguments). */
  consts: Readonly<Record<string, number | boolean>>;
  /** Bound at @binding(i) of @group(0), in order. */
  bindings: readonly Binding[];
  /** The launch grid in workgroups; grid z counts batched members where a kernel has them. */
  workgroups: readonly [number, number, number];
  wgsl: WgslSource;
  /**
   * The kernel on the CPU device, for kernels esflow's native library does not have (a custom
   * stage's own WGSL): called with a view of each binding's bytes, in binding order.
   */
  cpu?: (bindings: DataView[]) => void;
}

/**
 * Copies bytes between buffers. Inside a {@link Block} that repeats, the source offset moves
 * `srcStep` bytes per repetition (a member group's records out of the iteration's table, a
 * micro-batch's tokens out of the iteration's), and the destination `dstStep`.
 */
export interface Copy extends OpBase {
  op: "copy";
  src: DeviceBuffer;
  srcOffset: number;
  dst: DeviceBuffer;
  dstOffset: number;
  bytes: number;
  srcStep?: number;
  dstStep?: number;
}

/** Zeroes a buffer. */
export interface Clear extends OpBase {
  op: "clear";
  buffer: DeviceBuffer;
}

/** One step of a program. */
export type Op = Dispatch | Copy | Clear;

/**
 * Ops run `repeat` times in order (a group of members, a micro-batch); repetition i moves each
 * {@link Copy}'s offsets by i·srcStep and i·dstStep, the only thing that differs between
 * repetitions.
 */
export interface Block {
  op: "block";
  /** What one repetition is, e.g. "member", "micro-batch of 16×64". */
  what: string;
  repeat: number;
  body: Program;
}

/** A program: ops and blocks, executed in order. */
export type Program = readonly (Op | Block)[];

/** One byte range to read back. */
export interface ReadSource {
  buffer: DeviceBuffer;
  offset?: number;
  bytes: number;
}

/** Where a device stands on memory: bytes alive now and the most alive at once. */
export interface MemoryUse {
  /** Bytes alive now. */
  live: number;
  /** The most bytes alive at once. */
  peak: number;
}

/** An error from a device: no adapter or library, a validation error, a lost device. */
export class DeviceError extends Error {
  override name = "DeviceError";
}

/**
 * Where ops run. Builders call {@link createBuffer} and read {@link limits}; a run then writes
 * inputs, {@link run}s programs and reads results back. On WebGPU `run` queues work and a read
 * waits for it; on the CPU `run` executes at once.
 *
 * A user gets one from acquireDevice (kernels/backend.ts) and hands it to the engine; the
 * members marked internal are the executor side that the kernel builders and the engine call
 * (documented here, left out of the public API's docs).
 */
export interface Device {
  /** Which executor this is: "webgpu" or "cpu". */
  readonly backend: Backend;
  /** The adapter's name, or the CPU model with its thread count and BLAS. */
  readonly name: string;
  /** The limits builders plan with. */
  readonly limits: DeviceLimits;
  /** Largest bytes of one tensor shard. */
  readonly shardBytes: number;
  /** Whether {@link run} executes (false for a planning device). */
  readonly executes: boolean;
  /**
   * Allocates a buffer of `bytes` (a multiple of 16) that holds `purpose`.
   * @internal
   */
  createBuffer(label: string, bytes: number, purpose: BufferPurpose): DeviceBuffer;
  /**
   * Frees a buffer made by {@link createBuffer}.
   * @internal
   */
  destroyBuffer(buffer: DeviceBuffer): void;
  /**
   * Writes `data` into `buffer` at byte `offset`, ordered before later runs.
   * @internal
   */
  write(buffer: DeviceBuffer, data: ArrayBufferView, offset?: number): void;
  /**
   * Runs a program (queued on WebGPU; at once on the CPU).
   * @internal
   */
  run(program: Program, label?: string): void;
  /**
   * Reads byte ranges back once all queued work is done: one round trip.
   * @internal
   */
  readMany(sources: readonly ReadSource[]): Promise<ArrayBuffer[]>;
  /**
   * Reads `count` f32 of one buffer from byte `offset`.
   * @internal
   */
  readF32(buffer: DeviceBuffer, count: number, offset?: number): Promise<Float32Array>;
  /** Waits until queued work is done. */
  finish(): Promise<void>;
  /**
   * Runs `fn`, turning device errors it causes into one {@link DeviceError} naming `context`.
   * @internal
   */
  scoped<T>(context: string, fn: () => T | Promise<T>): Promise<T>;
  /** Bytes of buffers alive now, and the most alive at once since the last {@link resetPeak}. */
  readonly memory: MemoryUse;
  /** Starts a new peak measurement from the bytes alive now. */
  resetPeak(): void;
  /**
   * Every live buffer made by {@link createBuffer}, in allocation order.
   * @internal
   */
  allocations(): { label: string; bytes: number; purpose: BufferPurpose }[];
  /** Frees every buffer and the device itself. */
  destroy(): void;
}

/** Rounds `n` up to a multiple of `to`. */
export function alignUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

/** The buffer and byte range of a binding (size: to the end of the buffer when absent). */
export function bindingRange(b: Binding): { buffer: DeviceBuffer; offset: number; size: number } {
  if ("buffer" in b) {
    const offset = b.offset ?? 0;
    return { buffer: b.buffer, offset, size: b.size ?? b.buffer.size - offset };
  }
  return { buffer: b, offset: 0, size: b.size };
}

/** Sets `stage` (and `role`, where given) on every op of `program` that has none yet. */
export function staged<P extends Program>(stage: Stage, program: P, role?: string): P {
  for (const op of program) {
    if (op.op === "block") staged(stage, op.body, role);
    else {
      op.stage ??= stage;
      if (role !== undefined) op.role ??= role;
    }
  }
  return program;
}

/** The ops of a program with every block expanded, in execution order. */
export function* expand(program: Program): Generator<Op> {
  for (const op of program) {
    if (op.op !== "block") {
      yield op;
      continue;
    }
    for (let i = 0; i < op.repeat; i++) {
      for (const inner of expand(op.body)) {
        yield inner.op === "copy" && (inner.srcStep || inner.dstStep)
          ? {
            ...inner,
            srcOffset: inner.srcOffset + i * (inner.srcStep ?? 0),
            dstOffset: inner.dstOffset + i * (inner.dstStep ?? 0),
            srcStep: undefined,
            dstStep: undefined,
          }
          : inner;
      }
    }
  }
}

/** The bytes a device accounts for a buffer of `bytes`: at least 16, a multiple of 16. */
export function bufferBytes(bytes: number): number {
  return Math.max(16, alignUp(bytes, 16));
}

/**
 * A device that declares buffers and runs nothing, with the limits of a real or named device:
 * builders run against it to plan a model of any size (the 32B preset on a laptop). Its
 * {@link Device.allocations} are what a real device of these limits would allocate.
 */
export function planDevice(
  o: { backend: Backend; name: string; limits: DeviceLimits; shardBytes?: number },
): Device {
  const ledger = new Map<DeviceBuffer, true>();
  let live = 0, peak = 0;
  const refuse = (what: string): never => {
    throw new DeviceError(`a planning device (${o.name}) does not ${what}`);
  };
  return {
    backend: o.backend,
    name: o.name,
    limits: o.limits,
    shardBytes: shardBytesFor(o.limits, o.shardBytes),
    executes: false,
    createBuffer(label, bytes, purpose) {
      const size = bufferBytes(bytes);
      checkBufferSize(label, size, o.limits, o.name);
      const b: DeviceBuffer = { label, size, purpose };
      ledger.set(b, true);
      live += size;
      peak = Math.max(peak, live);
      return b;
    },
    destroyBuffer(b) {
      if (ledger.delete(b)) live -= b.size;
    },
    write() {},
    run: () => refuse("run programs"),
    readMany: () => refuse("read buffers"),
    readF32: () => refuse("read buffers"),
    finish: () => Promise.resolve(),
    scoped: async (_c, fn) => await fn(),
    get memory() {
      return { live, peak };
    },
    resetPeak() {
      peak = live;
    },
    allocations: () =>
      [...ledger.keys()].map((b) => ({ label: b.label, bytes: b.size, purpose: b.purpose })),
    destroy() {},
  };
}

/** Throws unless a buffer of `size` bytes fits the device. */
export function checkBufferSize(label: string, size: number, limits: DeviceLimits, name: string) {
  if (size > limits.maxBufferSize) {
    throw new DeviceError(
      `buffer ${label}: ${size} bytes exceeds the maxBufferSize ${limits.maxBufferSize} of ${name}`,
    );
  }
}

/** The shard size: the binding limit, or a smaller requested one, in whole vec4s (16 bytes). */
export function shardBytesFor(limits: DeviceLimits, requested?: number): number {
  const cap = Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize);
  const bytes = Math.floor(Math.min(requested ?? cap, cap) / 16) * 16;
  if (bytes < 16) throw new DeviceError(`shardBytes must be at least 16, got ${requested}`);
  return bytes;
}
