// `deno task bench` on the cpu backend: its JSON names the backend and the device, has every key,
// its numbers are positive or null (never invented), and each ratio is the quotient of its two
// parts from the same run. No speed is asserted: the timings of a shared machine are noise.
import { assert, assertEquals, runCli } from "./helpers.ts";

/** Each ratio key and the two keys it divides. */
const RATIOS: Record<string, [string, string]> = {
  es_over_inference: ["es_tokens_per_s", "inference_tokens_per_s"],
  es_over_peer: ["es_tokens_per_s", "peer_es_tokens_per_s"],
  lowrank_over_peer: ["lowrank_best_es_tokens_per_s", "peer_es_tokens_per_s"],
  lowrank_over_peer_lowrank: ["lowrank_best_es_tokens_per_s", "peer_lowrank_es_tokens_per_s"],
  matmul_over_blas: ["matmul_1024_gflops", "blas_gflops"],
  matmul_over_numpy: ["matmul_1024_gflops", "numpy_gflops"],
  threads_speedup: ["es_all_threads_tokens_per_s", "es_1_thread_tokens_per_s"],
};

/** Measured on the cpu backend even without the peer: never null there. */
const MEASURED = [
  "es_tokens_per_s",
  "inference_tokens_per_s",
  "es_seconds_per_iteration",
  "weight_bytes",
  "peak_device_bytes",
  "workspace_bytes",
  "lowrank_es_tokens_per_s",
  "lowrank_peak_device_bytes",
  "lowrank_workspace_bytes",
  "lowrank_batched_es_tokens_per_s",
  "lowrank_batched_member_batch",
  "lowrank_best_es_tokens_per_s",
  "lowrank_best_member_batch",
  "blas_gflops",
  "blas_1_thread_gflops",
  "matmul_1024_gflops",
  "forward_tokens_per_s",
  "forward_ms_per_batch",
  "es_1_thread_tokens_per_s",
  "es_all_threads_tokens_per_s",
  "threads",
  "all_threads",
  "es_over_inference",
  "matmul_over_blas",
  "threads_speedup",
];

/** Skipped by --no-peer, so null. */
const PEER = [
  "peer_es_tokens_per_s",
  "peer_lowrank_es_tokens_per_s",
  "peer_threads",
  "peer_openblas_threads",
  "es_over_peer",
  "lowrank_over_peer",
  "lowrank_over_peer_lowrank",
];

/** Measured where the machine has them (numpy), or not in a quick run: a number or null. */
const OPTIONAL = [
  "numpy_gflops",
  "matmul_over_numpy",
  "lowrank_best_1_thread_tokens_per_s",
  "copy_es_tokens_per_s",
  "copy_peak_device_bytes",
  "copy_workspace_bytes",
  "bf16_es_tokens_per_s",
  "bf16_weight_bytes",
  "bf16_peak_device_bytes",
  "bf16_workspace_bytes",
];

function close(a: number, b: number): boolean {
  return Math.abs(a - b) <= 1e-9 * Math.max(Math.abs(a), Math.abs(b));
}

Deno.test("bench --quick --json --no-peer on cpu: keys, positive numbers, ratios of parts", async () => {
  const out = await runCli([
    "tools/bench.ts",
    "--backend",
    "cpu",
    "--quick",
    "--json",
    "--no-peer",
  ]);
  assertEquals(out.code, 0, `exit code; stderr:\n${out.stderr}`);
  const lines = out.stdout.trim().split("\n");
  assertEquals(lines.length, 1, "stdout is the JSON line alone (the tables go to stderr)");
  const r = JSON.parse(lines[0]) as Record<string, unknown>;
  const value = (k: string) => {
    assert(k in r, `key ${k} is missing`);
    return r[k];
  };

  assertEquals(r.backend, "cpu");
  assert(typeof r.device === "string" && /thread/.test(r.device), `device ${r.device}`);
  assert(
    typeof r.command === "string" && r.command.startsWith("deno task bench"),
    `command ${r.command}`,
  );
  assert(out.stderr.includes(`backend cpu`) && out.stderr.includes(`command: deno task bench`));

  for (const k of MEASURED) {
    const v = value(k);
    assert(typeof v === "number" && Number.isFinite(v) && v > 0, `${k} = ${v}: a positive number`);
  }
  for (const k of PEER) assertEquals(value(k), null, `${k} without the peer`);
  for (const k of OPTIONAL) {
    const v = value(k);
    assert(v === null || (typeof v === "number" && v > 0), `${k} = ${v}: positive or null`);
  }
  for (const [k, [a, b]] of Object.entries(RATIOS)) {
    const q = value(k), x = value(a), y = value(b);
    if (x === null || y === null) assertEquals(q, null, `${k} with ${a} or ${b} null`);
    else assert(close(q as number, (x as number) / (y as number)), `${k} = ${q} ≠ ${a} / ${b}`);
  }

  const matmul = value("matmul") as { m: number; k: number; n: number; gflops: number }[];
  assert(Array.isArray(matmul) && matmul.length > 0, "matmul shapes");
  for (const s of matmul) {
    for (const f of ["m", "k", "n", "gflops"] as const) {
      assert(s[f] > 0, `matmul ${JSON.stringify(s)}: ${f} positive`);
    }
  }
  assertEquals([matmul[0].m, matmul[0].k, matmul[0].n], [1024, 1024, 1024]);
  assertEquals(matmul[0].gflops, r.matmul_1024_gflops);

  // Low rank: member batch 1 is lowrank_es_tokens_per_s, every member at once the batched one,
  // and the best is the fastest of those measured.
  const batches = value("lowrank_member_batches") as Record<string, number>;
  const N = value("population") as number;
  assertEquals(batches["1"], r.lowrank_es_tokens_per_s);
  assertEquals(r.lowrank_batched_member_batch, N);
  assertEquals(batches[String(N)], r.lowrank_batched_es_tokens_per_s);
  assertEquals(Math.max(...Object.values(batches)), r.lowrank_best_es_tokens_per_s);
  assertEquals(batches[String(r.lowrank_best_member_batch)], r.lowrank_best_es_tokens_per_s);

  // One side of the threads comparison is the main run, at the device's thread count.
  const t = r.threads === 1 ? "es_1_thread_tokens_per_s" : "es_all_threads_tokens_per_s";
  if (r.threads === 1 || r.threads === r.all_threads) assertEquals(r[t], r.es_tokens_per_s);

  // The targets are the ratios above, met exactly when they reach the target.
  const targets = value("targets") as { ratio: number | null; target: number; met: boolean }[];
  assertEquals(
    targets.map((x) => x.ratio),
    [r.es_over_peer, r.lowrank_over_peer, r.es_over_inference, r.matmul_over_numpy],
  );
  for (const x of targets) assertEquals(x.met, x.ratio === null ? null : x.ratio >= x.target);
});

Deno.test("bench --tune on cpu: nothing to tune, one line, exit 2", async () => {
  const out = await runCli(["tools/bench.ts", "--backend", "cpu", "--tune"]);
  assertEquals(out.code, 2, `exit code; stderr:\n${out.stderr}`);
  assertEquals(out.stdout, "");
  const lines = out.stderr.trim().split("\n");
  assertEquals(lines.length, 1, `one line on stderr, got:\n${out.stderr}`);
  assert(/nothing to tune|none to tune/.test(lines[0]), lines[0]);
});
