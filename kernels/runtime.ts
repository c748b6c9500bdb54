/**
 * The WebGPU device: one adapter, one device, its real limits, a pipeline cache, error scopes
 * that say where a validation error came from, and device-loss reporting. It executes
 * {@link Program}s (kernels/device.ts) by encoding their dispatches, copies and clears into one
 * command buffer per run.
 *
 * It is headless: any adapter Deno's WebGPU finds (Vulkan, Metal, DX12, or Mesa's
 * llvmpipe/lavapipe on a CPU, the test adapter of this path).
 *
 * Tests: tests/runtime_test.ts.
 *
 * @module
 */
import {
  alignUp,
  bindingRange,
  bufferBytes,
  type BufferPurpose,
  checkBufferSize,
  type Device,
  type DeviceBuffer,
  DeviceError,
  type DeviceLimits,
  type Dispatch,
  type Program,
  type ReadSource,
  shardBytesFor,
} from "./device.ts";

export { alignUp } from "./device.ts";

/** An error from the GPU layer: no adapter, a validation error, or a lost device. */
export class GpuError extends DeviceError {
  override name = "GpuError";
}

/** The optional features esflow probes for, and whether the adapter has them. */
export interface GpuFeatures {
  /** f16 arithmetic and storage in WGSL. */
  shaderF16: boolean;
  /** GPU-side timing of compute passes. */
  timestampQuery: boolean;
  /** subgroup built-ins in WGSL. */
  subgroups: boolean;
}

/** The adapter limits esflow plans with (bytes unless named otherwise). */
export type GpuLimits = DeviceLimits;

/** Options for {@link acquireGpu}. */
export interface AcquireOptions {
  /** Prefer a discrete GPU ("high-performance") or an integrated one. Default high-performance. */
  powerPreference?: GPUPowerPreference;
  /**
   * Largest bytes one tensor shard may take. Defaults to the adapter's
   * maxStorageBufferBindingSize; tests set it small so sharding is exercised.
   */
  shardBytes?: number;
}

const FIX_NO_ADAPTER =
  "no WebGPU adapter found. On a CPU-only Linux machine install Mesa's Vulkan driver " +
  "(apt-get install -y mesa-vulkan-drivers); on a GPU machine install its Vulkan, Metal or DX12 driver. " +
  "DENO_WEBGPU_BACKEND=vulkan|gl picks a backend.";

/** A buffer of a {@link Gpu}: the device buffer behind a {@link DeviceBuffer}. */
class GpuBuffer implements DeviceBuffer {
  constructor(
    readonly label: string,
    readonly size: number,
    readonly purpose: BufferPurpose,
    readonly raw: GPUBuffer,
  ) {}
}

/**
 * A WebGPU device with the adapter's own limits, probed features, a pipeline cache,
 * and error reporting with context.
 */
export class Gpu implements Device {
  readonly backend = "webgpu" as const;
  readonly executes = true;
  /** The device all work runs on. */
  readonly device: GPUDevice;
  /** The adapter's name as reported by the driver, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)". */
  readonly adapterName: string;
  /** Optional features that were found and enabled. */
  readonly features: GpuFeatures;
  /** The limits the device was created with (the adapter's own). */
  readonly limits: GpuLimits;
  /** Largest bytes of one tensor shard. */
  readonly shardBytes: number;
  /** Subgroup width the adapter reports (8 on lavapipe), or 0 when unknown. */
  readonly subgroupSize: number;
  /** Whether the adapter is a CPU stand-in (lavapipe, llvmpipe, SwiftShader, a fallback). */
  readonly software: boolean;

  #pipelines = new Map<string, GPUComputePipeline>();
  #lost: string | null = null;
  #uncaptured: string[] = [];
  #bytesLive = 0;
  #ledger = new Set<GpuBuffer>();
  #bytesPeak = 0;
  /** Each dispatch's pipeline and bind group, made the first time it is encoded. */
  #encoded = new WeakMap<Dispatch, { pipeline: GPUComputePipeline; bindGroup: GPUBindGroup }>();

  constructor(
    device: GPUDevice,
    info: {
      adapterName: string;
      features: GpuFeatures;
      limits: GpuLimits;
      subgroupSize: number;
      software?: boolean;
    },
    shardBytes: number,
  ) {
    this.device = device;
    this.adapterName = info.adapterName;
    this.features = info.features;
    this.limits = info.limits;
    this.subgroupSize = info.subgroupSize;
    this.software = info.software ?? isSoftwareAdapterName(info.adapterName);
    this.shardBytes = shardBytes;
    device.lost.then((e) => {
      this.#lost = `${e.reason}: ${e.message}`;
    });
    device.addEventListener("uncapturederror", (ev) => {
      this.#uncaptured.push((ev as GPUUncapturedErrorEvent).error.message);
    });
  }

  /** The adapter's name: what every command prints as the device it ran on. */
  get name(): string {
    return this.adapterName;
  }

  /** Throws if the device was lost or an error escaped every scope. */
  assertHealthy(context: string): void {
    if (this.#lost !== null) {
      throw new GpuError(
        `${context}: the WebGPU device was lost (${this.#lost}) on ${this.adapterName}`,
      );
    }
    if (this.#uncaptured.length > 0) {
      const msg = this.#uncaptured.splice(0).join("; ");
      throw new GpuError(`${context}: WebGPU error on ${this.adapterName}: ${firstLine(msg)}`);
    }
  }

  /**
   * Runs `fn` inside validation and out-of-memory error scopes and throws a {@link GpuError}
   * naming `context` if either caught something.
   */
  async scoped<T>(context: string, fn: () => T | Promise<T>): Promise<T> {
    this.assertHealthy(context);
    this.device.pushErrorScope("out-of-memory");
    this.device.pushErrorScope("validation");
    let result: T | undefined;
    let failure: unknown = null;
    try {
      result = await fn();
    } catch (e) {
      failure = e;
    }
    // Scopes must be popped whatever happened, in reverse order of pushing.
    const validation = await this.device.popErrorScope();
    const oom = await this.device.popErrorScope();
    if (validation) {
      throw new GpuError(`${context}: WebGPU validation error: ${firstLine(validation.message)}`);
    }
    if (oom) throw new GpuError(`${context}: out of GPU memory on ${this.adapterName}`);
    if (failure !== null) throw failure;
    this.assertHealthy(context);
    return result as T;
  }

  /**
   * A compute pipeline for `code`, compiled once and cached by its source text.
   * Compilation errors are raised with the kernel's label and the first message.
   */
  pipeline(label: string, code: string, entryPoint = "main"): GPUComputePipeline {
    const key = `${entryPoint}\u0000${code}`;
    let p = this.#pipelines.get(key);
    if (p) return p;
    this.device.pushErrorScope("validation");
    const module = this.device.createShaderModule({ label, code });
    p = this.device.createComputePipeline({
      label,
      layout: "auto",
      compute: { module, entryPoint },
    });
    // Compilation errors surface asynchronously; checkPipelines() awaits them.
    this.#pending.push(
      this.device.popErrorScope().then((e) =>
        e ? `kernel ${label}: ${firstLine(e.message)}` : null
      ),
    );
    this.#pipelines.set(key, p);
    return p;
  }

  #pending: Promise<string | null>[] = [];

  /** Awaits the compile checks of every pipeline created so far; throws on the first failure. */
  async checkPipelines(): Promise<void> {
    const results = await Promise.all(this.#pending.splice(0));
    const bad = results.find((r) => r !== null);
    if (bad) throw new GpuError(`WebGPU shader error: ${bad}`);
  }

  /** Number of distinct pipelines compiled so far. */
  get pipelineCount(): number {
    return this.#pipelines.size;
  }

  /** Creates a storage buffer (plus copy usages) and counts its bytes. */
  createBuffer(label: string, bytes: number, purpose: BufferPurpose): DeviceBuffer {
    const size = bufferBytes(bytes);
    checkBufferSize(label, size, this.limits, this.adapterName);
    const raw = this.device.createBuffer({ label, size, usage: STORAGE });
    const buffer = new GpuBuffer(label, size, purpose, raw);
    this.#ledger.add(buffer);
    this.#bytesLive += size;
    this.#bytesPeak = Math.max(this.#bytesPeak, this.#bytesLive);
    return buffer;
  }

  /** Destroys a buffer made by {@link createBuffer} and uncounts it. */
  destroyBuffer(buffer: DeviceBuffer): void {
    const b = buffer as GpuBuffer;
    if (!this.#ledger.delete(b)) return;
    this.#bytesLive -= b.size;
    b.raw.destroy();
  }

  /** The GPUBuffer behind a buffer of this device. */
  raw(buffer: DeviceBuffer): GPUBuffer {
    if (!(buffer instanceof GpuBuffer)) {
      throw new GpuError(`buffer ${buffer.label} does not belong to a WebGPU device`);
    }
    return buffer.raw;
  }

  /** Starts a new peak measurement from the bytes alive now. */
  resetPeak(): void {
    this.#bytesPeak = this.#bytesLive;
  }

  /** Bytes of device buffers alive now, and the most alive at once (since {@link resetPeak}). */
  get memory(): { live: number; peak: number } {
    return { live: this.#bytesLive, peak: this.#bytesPeak };
  }

  /** Every live buffer made by {@link createBuffer}: its label and bytes, in allocation order. */
  allocations(): { label: string; bytes: number; purpose: BufferPurpose }[] {
    return [...this.#ledger].map((b) => ({ label: b.label, bytes: b.size, purpose: b.purpose }));
  }

  /** Writes `data` into `buffer` at `offset` bytes. */
  write(buffer: DeviceBuffer, data: ArrayBufferView, offset = 0): void {
    this.device.queue.writeBuffer(
      this.raw(buffer),
      offset,
      data.buffer as ArrayBuffer,
      data.byteOffset,
      alignUp(data.byteLength, 4),
    );
  }

  /** The pipeline and bind group of a dispatch, made once. */
  encoded(d: Dispatch): { pipeline: GPUComputePipeline; bindGroup: GPUBindGroup } {
    let e = this.#encoded.get(d);
    if (e) return e;
    const pipeline = this.pipeline(d.wgsl.label, d.wgsl.code(), d.wgsl.entryPoint ?? "main");
    const bindGroup = this.device.createBindGroup({
      label: d.label,
      layout: pipeline.getBindGroupLayout(0),
      entries: d.bindings.map((b, i) => {
        const r = bindingRange(b);
        return {
          binding: i,
          resource: { buffer: this.raw(r.buffer), offset: r.offset, size: r.size },
        };
      }),
    });
    e = { pipeline, bindGroup };
    this.#encoded.set(d, e);
    return e;
  }

  /** Encodes `program` into `encoder`: runs of dispatches as compute passes, copies between. */
  encode(encoder: GPUCommandEncoder, program: Program): void {
    let pass: GPUComputePassEncoder | null = null;
    const close = () => {
      pass?.end();
      pass = null;
    };
    const walk = (ops: Program, step: number) => {
      for (const op of ops) {
        if (op.op === "block") {
          for (let i = 0; i < op.repeat; i++) walk(op.body, i);
        } else if (op.op === "dispatch") {
          const [x, y, z] = op.workgroups;
          if (x * y * z === 0) continue;
          const e = this.encoded(op);
          pass ??= encoder.beginComputePass({ label: "esflow" });
          pass.setPipeline(e.pipeline);
          pass.setBindGroup(0, e.bindGroup);
          pass.dispatchWorkgroups(x, y, z);
        } else if (op.op === "copy") {
          close();
          if (op.bytes === 0) continue;
          encoder.copyBufferToBuffer(
            this.raw(op.src),
            op.srcOffset + step * (op.srcStep ?? 0),
            this.raw(op.dst),
            op.dstOffset + step * (op.dstStep ?? 0),
            op.bytes,
          );
        } else {
          close();
          encoder.clearBuffer(this.raw(op.buffer));
        }
      }
    };
    walk(program, 0);
    close();
  }

  /** Encodes and submits `program` as one command buffer (no wait). */
  run(program: Program, label = "esflow"): void {
    const enc = this.device.createCommandEncoder({ label });
    this.encode(enc, program);
    this.device.queue.submit([enc.finish()]);
  }

  /**
   * Reads `bytes` bytes from each buffer in one mapAsync round trip (each round trip costs
   * ~11 ms on lavapipe, so callers batch what they need into one call).
   */
  async readMany(sources: readonly ReadSource[]): Promise<ArrayBuffer[]> {
    // A shader that failed to compile shows up here as its own error, not as the invalid
    // pipeline's knock-on errors.
    await this.checkPipelines();
    this.assertHealthy("readback");
    const total = sources.reduce((s, x) => s + alignUp(x.bytes, 4), 0);
    const staging = this.device.createBuffer({
      label: "readback",
      size: Math.max(16, total),
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    const enc = this.device.createCommandEncoder({ label: "readback" });
    let at = 0;
    for (const s of sources) {
      const n = alignUp(s.bytes, 4);
      if (n > 0) enc.copyBufferToBuffer(this.raw(s.buffer), s.offset ?? 0, staging, at, n);
      at += n;
    }
    this.device.queue.submit([enc.finish()]);
    try {
      await staging.mapAsync(GPUMapMode.READ);
    } catch (e) {
      // A failed map is the symptom; a lost device or an earlier validation error is the cause.
      this.assertHealthy("readback");
      throw new GpuError(`readback on ${this.adapterName} failed: ${(e as Error).message}`);
    }
    const mapped = staging.getMappedRange();
    const out: ArrayBuffer[] = [];
    at = 0;
    for (const s of sources) {
      out.push(mapped.slice(at, at + s.bytes));
      at += alignUp(s.bytes, 4);
    }
    staging.unmap();
    staging.destroy();
    this.assertHealthy("readback");
    return out;
  }

  /** Reads one buffer as f32. */
  async readF32(buffer: DeviceBuffer, count: number, offset = 0): Promise<Float32Array> {
    const [b] = await this.readMany([{ buffer, offset, bytes: count * 4 }]);
    return new Float32Array(b);
  }

  /** Waits until the GPU has finished all submitted work. */
  async finish(): Promise<void> {
    await this.device.queue.onSubmittedWorkDone();
    this.assertHealthy("submitted work");
  }

  /** Releases the device. */
  destroy(): void {
    this.device.destroy();
  }
}

/** Usage of every esflow storage buffer: bound in shaders, written and read by copies. */
export const STORAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;

/**
 * Whether an adapter name is a CPU stand-in for a GPU: Mesa's llvmpipe and lavapipe, Google's
 * SwiftShader. They run WGSL correctly but at a fraction of BLAS speed.
 */
export function isSoftwareAdapterName(name: string): boolean {
  return /llvmpipe|lavapipe|swiftshader/i.test(name);
}

/**
 * Acquires an adapter and a device with the adapter's own limits and the optional
 * features it has. Throws a {@link GpuError} that says how to install a driver when none is found.
 */
export async function acquireGpu(options: AcquireOptions = {}): Promise<Gpu> {
  if (typeof navigator === "undefined" || !("gpu" in navigator)) {
    throw new GpuError(FIX_NO_ADAPTER);
  }
  const adapter = await navigator.gpu.requestAdapter({
    powerPreference: options.powerPreference ?? "high-performance",
  });
  if (!adapter) throw new GpuError(FIX_NO_ADAPTER);

  const wanted: GPUFeatureName[] = ["shader-f16", "timestamp-query", "subgroups" as GPUFeatureName];
  const requiredFeatures = wanted.filter((f) => adapter.features.has(f));

  // The default device limits are far below what adapters offer (2 GiB buffers against 256 MiB,
  // for one): ask for the adapter's own numbers.
  const limits = limitsOf(adapter);
  const a = adapter.limits;
  const device = await adapter.requestDevice({
    label: "esflow",
    requiredFeatures,
    requiredLimits: { ...limits, maxComputeWorkgroupSizeX: a.maxComputeWorkgroupSizeX },
  });
  const info = adapter.info;
  const adapterName = nameOf(adapter);
  const features: GpuFeatures = {
    shaderF16: requiredFeatures.includes("shader-f16"),
    timestampQuery: requiredFeatures.includes("timestamp-query"),
    subgroups: requiredFeatures.includes("subgroups" as GPUFeatureName),
  };
  const subgroupSize = (info as unknown as { subgroupMinSize?: number }).subgroupMinSize ?? 0;
  const shardBytes = shardBytesFor(limits, options.shardBytes);
  const software = isFallback(adapter) || isSoftwareAdapterName(adapterName);
  return new Gpu(device, { adapterName, features, limits, subgroupSize, software }, shardBytes);
}

function firstLine(s: string): string {
  const line = s.split("\n").map((l) => l.trim()).find((l) => l.length > 0) ?? s;
  return line.length > 400 ? line.slice(0, 400) + "…" : line;
}

/** What the adapter Deno finds is, without making a device; null with no adapter. */
export async function adapterLimits(): Promise<
  { adapterName: string; limits: GpuLimits; software: boolean } | null
> {
  const adapter = typeof navigator !== "undefined" && "gpu" in navigator
    ? await navigator.gpu.requestAdapter({ powerPreference: "high-performance" })
    : null;
  if (!adapter) return null;
  const adapterName = nameOf(adapter);
  return {
    adapterName,
    limits: limitsOf(adapter),
    software: isFallback(adapter) || isSoftwareAdapterName(adapterName),
  };
}

/** GPUAdapterInfo.isFallbackAdapter where the runtime has it (the older adapter field too). */
function isFallback(adapter: GPUAdapter): boolean {
  const a = adapter as unknown as {
    isFallbackAdapter?: boolean;
    info?: { isFallbackAdapter?: boolean };
  };
  return a.info?.isFallbackAdapter === true || a.isFallbackAdapter === true;
}

function nameOf(adapter: GPUAdapter): string {
  const i = adapter.info;
  return i.description || i.device || i.vendor || "unknown adapter";
}

function limitsOf(adapter: GPUAdapter): GpuLimits {
  const a = adapter.limits;
  return {
    maxStorageBufferBindingSize: a.maxStorageBufferBindingSize,
    maxBufferSize: a.maxBufferSize,
    maxComputeWorkgroupsPerDimension: a.maxComputeWorkgroupsPerDimension,
    maxComputeInvocationsPerWorkgroup: a.maxComputeInvocationsPerWorkgroup,
    maxComputeWorkgroupStorageSize: a.maxComputeWorkgroupStorageSize,
    maxStorageBuffersPerShaderStage: a.maxStorageBuffersPerShaderStage,
    minStorageBufferOffsetAlignment: a.minStorageBufferOffsetAlignment,
  };
}
