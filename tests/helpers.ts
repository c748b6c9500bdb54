// Shared test utilities: assertions, a seeded generator for fresh random inputs, CLI runs, and
// a test body run once on each backend.
import type { Backend, Device } from "../kernels/device.ts";
import type { Gpu } from "../kernels/runtime.ts";

/** Throws with `message` unless `cond` holds. */
export function assert(cond: unknown, message = "assertion failed"): asserts cond {
  if (!cond) throw new Error(message);
}

/** Throws unless `actual === expected`. */
export function assertEquals<T>(actual: T, expected: T, message = ""): void {
  const a = JSON.stringify(actual), e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${message}\n  actual:   ${a}\n  expected: ${e}`);
}

/**
 * Elementwise |actual − expected| ≤ atol + rtol·|expected|; reports the worst element.
 */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: { atol?: number; rtol?: number } = {},
): void {
  const atol = tol.atol ?? 1e-6, rtol = tol.rtol ?? 1e-6;
  if (actual.length !== expected.length) {
    throw new Error(`length ${actual.length} ≠ expected ${expected.length}`);
  }
  let worst = -1, worstExcess = 0;
  for (let i = 0; i < actual.length; i++) {
    const d = Math.abs(actual[i] - expected[i]);
    const excess = d - (atol + rtol * Math.abs(expected[i]));
    if (!(excess <= 0) && (worst < 0 || !(excess <= worstExcess))) {
      worst = i;
      worstExcess = excess;
    }
  }
  if (worst >= 0) {
    throw new Error(
      `element ${worst}: ${actual[worst]} vs expected ${
        expected[worst]
      } (atol ${atol}, rtol ${rtol})`,
    );
  }
}

/** The spacing of f32 values at |x|: 2^(e − 23) for |x| in [2^e, 2^(e+1)); the smallest below. */
export function f32Ulp(x: number): number {
  const a = Math.abs(x);
  return a < 2 ** -126 ? 2 ** -149 : 2 ** (Math.floor(Math.log2(a)) - 23);
}

/** Elementwise |actual − expected| ≤ `ulps` f32 ulps of expected; reports the worst element. */
export function assertUlps(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  ulps: number,
): void {
  if (actual.length !== expected.length) {
    throw new Error(`length ${actual.length} ≠ expected ${expected.length}`);
  }
  let worst = -1, worstUlps = 0;
  for (let i = 0; i < actual.length; i++) {
    const d = Math.abs(actual[i] - expected[i]) / f32Ulp(expected[i]);
    if (!(d <= worstUlps)) {
      worst = i;
      worstUlps = d;
    }
  }
  if (worst >= 0 && !(worstUlps <= ulps)) {
    throw new Error(
      `element ${worst}: ${actual[worst]} vs expected ${expected[worst]} is ${worstUlps} ulps ` +
        `apart (at most ${ulps})`,
    );
  }
}

/** A seeded uniform [0, 1) generator (mulberry32), so failures reproduce. */
export function seeded(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `n` normal samples with standard deviation `std`. */
export function randn(rng: () => number, n: number, std = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = 1 - rng(), v = rng();
    out[i] = std * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
  return out;
}

/** Runs `deno task NAME args` (or a script) and captures its exit code and output. */
export async function runCli(
  args: string[],
  options: { cwd?: string } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const cmd = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...args],
    cwd: options.cwd ?? new URL("..", import.meta.url).pathname,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  });
  const out = await cmd.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Path of a file under tests/fixtures. */
export function fixture(path: string): string {
  return new URL(`./fixtures/${path}`, import.meta.url).pathname;
}

/** Temp dirs made by {@link tempDir}, removed when the test process exits. */
const tempDirs = new Set<string>();
let tempDirsOnUnload = false;

/** A fresh temporary directory, removed (recursively) when this test process exits. */
export async function tempDir(prefix = "esflow_test_"): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix });
  tempDirs.add(dir);
  if (!tempDirsOnUnload) {
    tempDirsOnUnload = true;
    globalThis.addEventListener("unload", () => {
      for (const d of tempDirs) {
        try {
          Deno.removeSync(d, { recursive: true });
        } catch { /* removed already by its test */ }
      }
    });
  }
  return dir;
}

/** Runs `fn` with a fresh temporary directory, removed afterwards. */
export async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await tempDir("esflow_test_");
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
    tempDirs.delete(dir);
  }
}

/**
 * Asserts `fn` (sync or async) throws a one-line UserError whose message contains each of
 * `parts`; returns the message.
 */
export async function assertUserError(fn: () => unknown, ...parts: string[]): Promise<string> {
  const { UserError } = await import("../errors.ts");
  let caught: unknown;
  try {
    await fn();
  } catch (err) {
    caught = err;
  }
  assert(caught instanceof UserError, `expected a UserError, got ${caught}`);
  assert(!caught.message.includes("\n"), `message is not one line: ${caught.message}`);
  for (const part of parts) {
    assert(caught.message.includes(part), `"${caught.message}" lacks "${part}"`);
  }
  return caught.message;
}

/**
 * Both backends, WebGPU first: lavapipe is the WebGPU test adapter on a CPU-only machine, and
 * the native CPU backend runs the same programs.
 */
export const BACKENDS: readonly Backend[] = ["webgpu", "cpu"];

/**
 * Registers `name (webgpu)` and `name (cpu)`, each running `fn` with its backend (or only the
 * backends in `o.backends`). The body acquires its own devices ({@link withDevice}), as many as
 * it needs and with the shard sizes it needs.
 */
export function testBackends(
  name: string,
  fn: (backend: Backend) => Promise<void>,
  o: { backends?: readonly Backend[] } = {},
): void {
  for (const backend of o.backends ?? BACKENDS) {
    Deno.test(`${name} (${backend})`, () => fn(backend));
  }
}

/** Runs `fn` with a fresh device of `backend` (shards of `o.shardBytes`), destroyed afterwards. */
export async function withDevice<T>(
  backend: Backend,
  o: { shardBytes?: number },
  fn: (device: Device) => Promise<T> | T,
): Promise<T> {
  const { acquireDevice } = await import("../kernels/backend.ts");
  const device = await acquireDevice({ backend, shardBytes: o.shardBytes });
  try {
    return await fn(device);
  } finally {
    device.destroy();
  }
}

/**
 * Waits for the pipelines a WebGPU device compiled so far, so a shader error surfaces here with
 * its kernel's name; nothing to wait for on the CPU, whose runs execute at once.
 */
export async function settled(device: Device): Promise<void> {
  if (device.backend === "webgpu") await (device as Gpu).checkPipelines();
}
