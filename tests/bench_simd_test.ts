// tools/bench_simd.ts: the hand-assembled WebAssembly SIMD RMSNorm and esflow.c's both pass the
// float64 check (the tool throws otherwise) on a small odd shape, and the table names both sides.
import { assert, assertEquals, runCli } from "./helpers.ts";

Deno.test("bench_simd: C and WebAssembly SIMD RMSNorm agree with float64, both timed", async () => {
  const r = await runCli(["tools/bench_simd.ts", "--rows", "37", "--dim", "132"]);
  assertEquals(r.code, 0, r.stderr);
  assert(/\| C \(esflow\.c\), 1 thread \| [\d.]+ \| [\d.]+ \|/.test(r.stdout), r.stdout);
  assert(/\| WebAssembly SIMD \(f32x4\), 1 thread \| [\d.]+ \| [\d.]+ \|/.test(r.stdout), r.stdout);
  const bad = await runCli(["tools/bench_simd.ts", "--dim", "130"]);
  assertEquals(bad.code, 2, bad.stderr);
  assert(/--dim a multiple of 4/.test(bad.stderr), bad.stderr);
});
