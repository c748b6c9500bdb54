// tools/bench_eval.ts: the eval it times runs at vocab 151936 and reports its backend, device and
// fitness (the CPU case here; the WebGPU cases run the same command with another --backend); a
// bad flag is one line and exit code 2.
import { assert, assertEquals, runCli } from "./helpers.ts";

Deno.test("bench_eval: a timed eval at vocab 151936 on the CPU backend, named and scored", async () => {
  const r = await runCli(["tools/bench_eval.ts", "--backend", "cpu", "--runs", "1"]);
  assertEquals(r.code, 0, r.stderr);
  const line = r.stdout.split("\n").find((l) => l.startsWith("cpu "));
  assert(line, r.stdout);
  const m = /^cpu +([\d.]+) s +cpu, (.+); fitness (-[\d.]+)$/.exec(line);
  assert(m, line);
  // A random model over 151,936 ids scores about ln(1/151936) = −11.93 per token.
  assert(Math.abs(Number(m[3]) + Math.log(151936)) < 0.5, `fitness ${m[3]}`);
  const bad = await runCli(["tools/bench_eval.ts", "--backend", "tpu"]);
  assertEquals(bad.code, 2, bad.stderr);
  assertEquals(bad.stderr.trim().split("\n").length, 1, bad.stderr);
});
