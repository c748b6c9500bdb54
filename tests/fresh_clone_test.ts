// A newcomer's first `deno task train` (issue 14, item 9): in a fresh copy of the repo with an
// empty DENO_DIR, nothing of npm's ("Download …", "Initialize …") comes before esflow's own
// first line. Opt-in (ESFLOW_FRESH_CLONE_TEST=1): it downloads every npm package (~100 MB).
import { assert, assertEquals } from "./helpers.ts";

const ROOT = new URL("..", import.meta.url).pathname;

Deno.test({
  name: "a fresh clone's first deno task train prints no npm lines before esflow's",
  ignore: Deno.env.get("ESFLOW_FRESH_CLONE_TEST") !== "1",
  async fn() {
    const tmp = await Deno.makeTempDir({ prefix: "esflow-fresh-" });
    try {
      // The working tree as a clone would have it: tracked and unignored files, no node_modules.
      const ls = await new Deno.Command("git", {
        args: ["ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd: ROOT,
        stdout: "piped",
      }).output();
      const files = new TextDecoder().decode(ls.stdout).split("\0").filter((f) => f);
      for (const f of files) {
        const to = `${tmp}/repo/${f}`;
        await Deno.mkdir(to.slice(0, to.lastIndexOf("/")), { recursive: true });
        await Deno.copyFile(`${ROOT}${f}`, to).catch(() => {}); // a file deleted in the tree
      }
      // stdout and stderr in one pipe, in the order a terminal would show them.
      const out = await new Deno.Command("sh", {
        args: [
          "-c",
          `"$0" task train --iterations 1 --out "$1" --no-status 2>&1`,
          Deno.execPath(),
          `${tmp}/run`,
        ],
        cwd: `${tmp}/repo`,
        stdout: "piped",
        env: { DENO_DIR: `${tmp}/deno_dir`, NO_COLOR: "1" },
      }).output();
      const text = new TextDecoder().decode(out.stdout);
      assertEquals(out.code, 0, text);
      const lines = text.split("\n");
      const first = lines.findIndex((l) => l.startsWith("esflow "));
      assert(first >= 0, text);
      const npm = lines.slice(0, first).filter((l) => /^(Download|Initialize) /.test(l));
      assertEquals(npm.length, 0, `npm lines before esflow's:\n${npm.slice(0, 5).join("\n")}…`);
    } finally {
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
    }
  },
});
