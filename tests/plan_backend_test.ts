// `deno task plan` plans for the backend the run would use (issue 14, item 8): on a machine whose
// only adapter is a software one (lavapipe here) that is the native CPU backend, which has no
// 128 MiB binding limit, so the paper's qwen3-4b pipeline plans where lavapipe would refuse it.
import { assert, assertEquals, runCli } from "./helpers.ts";
import { resolveBackend } from "../kernels/backend.ts";

Deno.test("plan: qwen3-4b plans for the backend train would use", async () => {
  const { backend } = await resolveBackend("auto");
  const r = await runCli(["tools/plan.ts", "configs/pipelines/qwen3-4b.yaml"]);
  assertEquals(r.code, 0, r.stderr);
  const line = r.stdout.split("\n").find((l) => l.startsWith("  backend ")) ?? "";
  assert(line.startsWith(`  backend ${backend} on `), `${backend} expected: ${line}`);
  assert(/6435\.94M parameters, 36 layers/.test(r.stdout), r.stdout);
  // Forced onto lavapipe it says which activation is over the limit and what to lower.
  const { adapterLimits } = await import("../kernels/runtime.ts");
  const adapter = await adapterLimits();
  if (adapter?.software) {
    const w = await runCli([
      "tools/plan.ts",
      "configs/pipelines/qwen3-4b.yaml",
      "--backend",
      "webgpu",
    ]);
    assertEquals(w.code, 2, w.stdout);
    assert(/binding limit.*lower the micro-batch or max length/.test(w.stderr), w.stderr);
  }
});
