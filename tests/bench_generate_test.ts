// The generation section of `deno task bench` (tools/bench_generate.ts) on the cpu backend: every
// number positive and the reward / log-likelihood ratio the quotient of its two parts. No speed
// is asserted: a shared machine's timings are noise.
import { assert, assertEquals, withDevice } from "./helpers.ts";
import { benchGeneration, printGeneration } from "../tools/bench_generate.ts";

Deno.test("bench generation: tokens/s with the cache, a reward iteration against a log-likelihood one", async () => {
  await withDevice("cpu", {}, async (device) => {
    const g = await benchGeneration(device, { quick: true });
    for (
      const k of [
        "tokens_per_s",
        "ms_per_step",
        "cache_bytes",
        "reward_seconds_per_iteration",
        "log_likelihood_seconds_per_iteration",
      ] as const
    ) {
      assert(Number.isFinite(g[k]) && g[k] > 0, `${k} = ${g[k]}`);
    }
    assertEquals(
      g.reward_over_log_likelihood,
      g.reward_seconds_per_iteration / g.log_likelihood_seconds_per_iteration,
    );
    // K and V · 4 layers · 16 sequences · 48 slots · 2 kv heads · head_dim 32 · 4 bytes (tiny).
    assertEquals(g.cache_bytes, 2 * 4 * 16 * 48 * 2 * 32 * 4);
    const lines: string[] = [];
    printGeneration(g, (l) => lines.push(l));
    assert(lines.some((l) => l.includes("reward / log-likelihood")), lines.join("\n"));
  });
});
