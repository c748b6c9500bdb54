// The GPU runtime: adapter limits and features, the no-adapter error, validation errors and
// device loss surfaced with context, the pipeline cache, and timestamp timing.
import { assert, assertEquals, fixture } from "./helpers.ts";
import { acquireGpu, GpuError } from "../kernels/runtime.ts";
import { dispatch, profileSteps, submitSteps, wgslConsts } from "../kernels/program.ts";
import { createTensor, readTensor } from "../kernels/tensor.ts";
import { rmsnormStep } from "../kernels/rmsnorm.ts";

async function rejects(fn: () => Promise<unknown>, pattern: RegExp): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    assert(e instanceof GpuError, `expected a GpuError, got ${e}`);
    assert(pattern.test(e.message), `"${e.message}" should match ${pattern}`);
    return e;
  }
  throw new Error(`expected a rejection matching ${pattern}`);
}

Deno.test("the device gets the adapter's own limits and names the adapter", async () => {
  const gpu = await acquireGpu();
  try {
    const adapter = (await navigator.gpu.requestAdapter())!;
    assertEquals(
      gpu.limits.maxStorageBufferBindingSize,
      adapter.limits.maxStorageBufferBindingSize,
    );
    assertEquals(gpu.limits.maxBufferSize, adapter.limits.maxBufferSize);
    assertEquals(
      gpu.device.limits.maxStorageBufferBindingSize,
      adapter.limits.maxStorageBufferBindingSize,
    );
    assert(gpu.adapterName.length > 0 && gpu.adapterName !== "unknown adapter", gpu.adapterName);
    assertEquals(gpu.features.timestampQuery, adapter.features.has("timestamp-query"));
    assertEquals(gpu.features.shaderF16, adapter.features.has("shader-f16"));
    assertEquals(gpu.shardBytes % 16, 0);
  } finally {
    gpu.destroy();
  }
});

/** tools/eval.ts on the tiny fixture with the Vulkan loader pointed at no driver: no adapter. */
async function evalWithoutAdapter(
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "tools/eval.ts",
      ...args,
      "--model",
      fixture("qwen3-tiny-tied-f32"),
      "--tokens",
      fixture("qwen3-tiny-tied-f32/tokens.json"),
    ],
    cwd: new URL("..", import.meta.url).pathname,
    env: {
      VK_ICD_FILENAMES: "/nonexistent.json",
      VK_DRIVER_FILES: "/nonexistent.json",
      DENO_WEBGPU_BACKEND: "vulkan",
    },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b).trim();
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

Deno.test("no adapter: --backend webgpu is one line that says how to install one, exit 2", async () => {
  const { code, stderr } = await evalWithoutAdapter(["--backend", "webgpu"]);
  assertEquals(code, 2, stderr);
  assertEquals(stderr.split("\n").length, 1, stderr);
  assert(/no WebGPU adapter/.test(stderr) && /mesa-vulkan-drivers/.test(stderr), stderr);
});

Deno.test("no adapter: the default backend is the native CPU one, and eval runs on it", async () => {
  const { code, stdout, stderr } = await evalWithoutAdapter([]);
  assertEquals(code, 0, stderr);
  const result = JSON.parse(stdout);
  assertEquals(result.backend, "cpu", stdout);
  assert(Number.isFinite(result.fitness) && result.fitness < 0, stdout);
});

Deno.test("a shader that does not compile is reported with the kernel's name", async () => {
  const gpu = await acquireGpu();
  try {
    gpu.pipeline("broken_kernel", "@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }");
    await rejects(() => gpu.checkPipelines(), /broken_kernel/);
  } finally {
    gpu.destroy();
  }
});

Deno.test("a validation error is surfaced with its context", async () => {
  const gpu = await acquireGpu();
  try {
    // A kernel with two bindings given one: the bind group made at encode time is invalid.
    const x = gpu.createBuffer("x", 64, "activations");
    const code = wgslConsts({ N: 4 }) +
      "@group(0) @binding(0) var<storage, read_write> x: array<f32>;\n" +
      "@group(0) @binding(1) var<storage, read_write> y: array<f32>;\n" +
      "@compute @workgroup_size(1) fn main() { x[0] = 1.0; y[0] = 2.0; }";
    const step = dispatch(gpu, {
      label: "w",
      kernel: "write_two",
      consts: { N: 4 },
      bindings: [x],
      workgroups: 1,
      wgsl: { label: "write_two", code: () => code },
    });
    await rejects(
      () => gpu.scoped("binding one buffer of two", () => gpu.run([step])),
      /binding one buffer of two: WebGPU validation error/,
    );
    // Errors that escape every scope are reported at the next readback, naming the adapter.
    gpu.run([{ ...step }]);
    const ok = gpu.createBuffer("ok", 16, "activations");
    await rejects(
      () => gpu.readF32(ok, 4),
      new RegExp(`readback: WebGPU error on ${gpu.adapterName.replace(/[()]/g, ".")}`),
    );
  } finally {
    gpu.destroy();
  }
});

Deno.test("a lost device is reported, not a hang or a crash", async () => {
  const gpu = await acquireGpu();
  const t = createTensor(gpu, "t", [4, 4], { data: new Float32Array(16).fill(1) });
  gpu.device.destroy();
  await gpu.device.lost;
  await rejects(() => readTensor(gpu, t), /device was lost/);
});

Deno.test("pipelines are compiled once and reused; GPU time comes from timestamp queries", async () => {
  const gpu = await acquireGpu();
  try {
    const x = gpu.createBuffer("x", 8 * 16 * 4, "activations"),
      w = gpu.createBuffer("w", 16 * 4, "activations"),
      y = gpu.createBuffer("y", 8 * 16 * 4, "activations");
    const make = () => rmsnormStep(gpu, { label: "n", x, w, y, rows: 8, dim: 16, eps: 1e-6 });
    // Pipelines are made when a step is first encoded, not when it is built.
    const before = gpu.pipelineCount;
    const steps = [make()];
    assertEquals(gpu.pipelineCount, before, "building compiles nothing");
    submitSteps(gpu, steps);
    assertEquals(gpu.pipelineCount, before + 1, "the first run compiles the pipeline");
    for (let i = 0; i < 5; i++) steps.push(make());
    submitSteps(gpu, steps);
    assertEquals(gpu.pipelineCount, before + 1, "same shapes, same pipeline");
    submitSteps(gpu, [rmsnormStep(gpu, { label: "n", x, w, y, rows: 4, dim: 16, eps: 1e-6 })]);
    assertEquals(gpu.pipelineCount, before + 2, "new constants, one new pipeline");
    const times = await profileSteps(gpu, steps);
    if (gpu.features.timestampQuery) {
      assert(
        times !== null && times.byKernel.rmsnorm > 0 && times.totalMs >= times.byKernel.rmsnorm,
      );
    } else {
      assertEquals(times, null);
    }
  } finally {
    gpu.destroy();
  }
});
