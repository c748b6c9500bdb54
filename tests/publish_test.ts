// The package publishes (issue 14, item 9): `deno publish --dry-run` type-checks mod.ts's public
// API for JSR (no slow types) and packs the files, LICENSE (MIT) among them. `deno doc --lint`
// finds every exported symbol of mod.ts documented and every type it references public (issue 10).
import { assert, assertEquals } from "./helpers.ts";

const ROOT = new URL("..", import.meta.url).pathname;

Deno.test("deno publish --dry-run passes and packs the MIT LICENSE", async () => {
  const license = await Deno.readTextFile(`${ROOT}LICENSE`);
  assert(license.startsWith("MIT License"), "LICENSE is the MIT license");
  const out = await new Deno.Command(Deno.execPath(), {
    // --allow-dirty: the working tree under test need not be committed.
    args: ["publish", "--dry-run", "--allow-dirty"],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assertEquals(out.code, 0, text);
  assert(/Dry run complete/.test(text), text);
  assert(/file:\/\/\S+\/LICENSE \(/.test(text), `LICENSE is in the package:\n${text}`);
});

Deno.test("deno doc --lint mod.ts reports no error", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["doc", "--lint", "mod.ts"],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assertEquals(out.code, 0, text);
  assert(!/error/.test(text), text);
});
