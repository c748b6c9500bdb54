// examples/compose.ts: a run composed through mod.ts alone (no deep imports) trains and prints a
// held-out loss below the random model's (ln 256 ≈ 5.55 nats per byte for the tiny preset).
import { assert, assertEquals, runCli } from "./helpers.ts";

Deno.test("examples/compose.ts trains through mod.ts alone and its held-out loss falls", async () => {
  const source = await Deno.readTextFile(new URL("../examples/compose.ts", import.meta.url));
  const imports = [...source.matchAll(/from "([^"]+)"/g)].map((m) => m[1]);
  assert(imports.length > 0 && imports.every((i) => i === "../mod.ts"), imports.join(", "));
  const r = await runCli(["examples/compose.ts"]);
  assertEquals(r.code, 0, r.stderr);
  const m = /held-out loss (\d+\.\d+) nats\/byte after 30 iterations on (cpu|webgpu)/.exec(
    r.stdout,
  );
  assert(m, r.stdout);
  const loss = Number(m[1]);
  assert(loss < 5.3 && loss > 3, `held-out loss ${loss}`);
});
