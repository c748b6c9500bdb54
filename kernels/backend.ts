/**
 * Which device a command runs on: `backend: auto | webgpu | cpu` in a pipeline, `--backend` on
 * the command line.
 *
 * `auto` takes WebGPU on a real GPU adapter, and the native CPU backend when the only adapter
 * is a software one (Mesa's llvmpipe or lavapipe, SwiftShader, an adapter marked as a fallback)
 * or when there is none: lavapipe runs WGSL correctly but at a fraction of BLAS speed, so it
 * stays the test adapter of the WebGPU path and is never chosen for work by itself.
 *
 * Tests: tests/backends_test.ts.
 *
 * @module
 */
import { type Backend, DEFAULT_LIMITS, type Device, type DeviceLimits } from "./device.ts";
import { acquireGpu, adapterLimits } from "./runtime.ts";
import { UserError } from "../errors.ts";

/** A backend as a user names it. */
export type BackendChoice = "auto" | Backend;

/** The backend names a user may give, in the order the help lists them. */
export const BACKEND_CHOICES: readonly BackendChoice[] = ["auto", "webgpu", "cpu"];

/** Options of {@link acquireDevice}. */
export interface DeviceOptions {
  /** Default "auto" (which ESFLOW_BACKEND, when set, turns into webgpu or cpu). */
  backend?: BackendChoice;
  /** Largest bytes of one tensor shard (tests force small shards). */
  shardBytes?: number;
  /** CPU backend threads; default every core (or ESFLOW_THREADS). */
  threads?: number;
}

/** Parses a backend name; anything else is a one-line error naming `where` and the choices. */
export function parseBackend(value: string, where = "--backend"): BackendChoice {
  if ((BACKEND_CHOICES as readonly string[]).includes(value)) return value as BackendChoice;
  throw new UserError(
    `${where}: unknown backend "${value}"; use one of ${BACKEND_CHOICES.join(", ")}`,
  );
}

/** The backend a choice resolves to on this machine, and why. */
export async function resolveBackend(
  choice: BackendChoice = "auto",
): Promise<{ backend: Backend; reason: string }> {
  if (choice === "auto") choice = defaultChoice();
  if (choice !== "auto") return { backend: choice, reason: "asked for" };
  const adapter = await adapterLimits();
  if (adapter && !adapter.software) {
    return { backend: "webgpu", reason: `GPU adapter ${adapter.adapterName}` };
  }
  return {
    backend: "cpu",
    reason: adapter
      ? `the only WebGPU adapter is a software one (${adapter.adapterName})`
      : "no WebGPU adapter",
  };
}

/** What `auto` means here: ESFLOW_BACKEND when set (webgpu or cpu), else auto. */
function defaultChoice(): BackendChoice {
  const env = Deno.env.get("ESFLOW_BACKEND");
  return env ? parseBackend(env, "ESFLOW_BACKEND") : "auto";
}

/** The device of a backend choice: a WebGPU device or the native CPU device. */
export async function acquireDevice(options: DeviceOptions = {}): Promise<Device> {
  const { backend } = await resolveBackend(options.backend);
  if (backend === "webgpu") return await acquireGpu({ shardBytes: options.shardBytes });
  const { acquireCpu } = await import("./cpu/device.ts");
  return await acquireCpu({ shardBytes: options.shardBytes, threads: options.threads });
}

/**
 * What a plan for a backend choice is made against, without making a device: the backend, the
 * device's name and its limits (the adapter's for WebGPU, WebGPU's defaults with no adapter,
 * the CPU's for the native backend).
 */
export async function planTarget(
  choice: BackendChoice = "auto",
): Promise<{ backend: Backend; name: string; limits: DeviceLimits }> {
  const { backend } = await resolveBackend(choice);
  if (backend === "cpu") {
    const { CPU_LIMITS, cpuName } = await import("./cpu/limits.ts");
    return { backend, name: cpuName(), limits: CPU_LIMITS };
  }
  const adapter = await adapterLimits();
  if (!adapter) {
    return { backend, name: "no adapter: WebGPU default limits", limits: DEFAULT_LIMITS };
  }
  return { backend, name: adapter.adapterName, limits: adapter.limits };
}
