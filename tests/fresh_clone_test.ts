// A newcomer's first `deno task train` (issue 14, item 9): in a fresh copy of the repo (no
// node_modules), nothing of npm's ("Download …", "Initialize …") comes before esflow's own first
// line. With this machine's Deno cache the packages are linked from it ("Initialize" lines, were
// they shown); with an empty DENO_DIR they are downloaded ("Download" lines), which is opt-in
// (ESFLOW_FRESH_CLONE_TEST=1): it fetches every npm package (~100 MB).
import { assert, assertEquals, tempDir } from "./helpers.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** `deno task train --iterations 1` in a copy of the tree; asserts no npm line before esflow's. */
async function firstTrain(o: { emptyDenoDir: boolean }): Promise<void> {
  const tmp = await tempDir("esflow-fresh-");
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
      env: o.emptyDenoDir ? { DENO_DIR: `${tmp}/deno_dir`, NO_COLOR: "1" } : { NO_COLOR: "1" },
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
}

Deno.test("a fresh clone's first deno task train, packages in Deno's cache: no npm lines first", () =>
  firstTrain({ emptyDenoDir: false }));

Deno.test({
  name: "a fresh clone's first deno task train, empty DENO_DIR: no npm lines first",
  ignore: Deno.env.get("ESFLOW_FRESH_CLONE_TEST") !== "1",
  fn: () => firstTrain({ emptyDenoDir: true }),
});
