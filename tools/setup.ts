/**
 * `deno run -A tools/setup.ts train|test|npm`: what every `deno task` runs first, so the README's
 * two commands are the whole set-up on a fresh Debian machine.
 *
 * It checks the system packages a command needs, installs the missing ones with apt-get when
 * it runs as root (otherwise prints the one line to run and exits 2), resolves the npm packages
 * quietly, and builds the native CPU kernels once (kernels/cpu/native.ts caches them), so the
 * command that follows starts with everything in place. When all is present it costs a few
 * dpkg queries.
 *
 *   npm:   nothing of the system's (plot, serve)
 *   train: libopenblas0-pthread (the CPU backend's BLAS), build-essential (its C compiler)
 *   test:  the same, plus mesa-vulkan-drivers (lavapipe: the WebGPU test adapter), redis-server
 *          (the distributed tests start their own), chromium (the dashboard's browser test)
 *
 * ESFLOW_SKIP_SETUP=1 skips it (a machine set up by other means, or not Debian).
 *
 * @module
 */

/** The Debian packages each command needs, and what for. */
const NEEDS: Record<string, [string, string][]> = {
  // Tasks that only read files (plot, serve): the npm packages and nothing of the system's.
  npm: [],
  train: [
    ["libopenblas0-pthread", "the CPU backend's BLAS"],
    ["build-essential", "the C compiler that builds the CPU backend's kernels"],
  ],
  test: [
    ["libopenblas0-pthread", "the CPU backend's BLAS"],
    ["build-essential", "the C compiler that builds the CPU backend's kernels"],
    ["mesa-vulkan-drivers", "lavapipe, the WebGPU adapter the WGSL tests run on"],
    ["redis-server", "the distributed tests' Redis"],
    ["chromium", "the dashboard's browser test"],
  ],
};

async function run(cmd: string, args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(cmd, { args, env, stdout: "piped", stderr: "piped" })
    .output()
    .catch(() => null);
  return {
    ok: out?.success ?? false,
    stdout: out ? new TextDecoder().decode(out.stdout) : "",
    stderr: out ? new TextDecoder().decode(out.stderr) : "",
  };
}

/** The packages of `names` that dpkg does not list as installed. */
async function missingPackages(names: string[]): Promise<string[]> {
  const r = await run("dpkg-query", ["-W", "-f", "${Package} ${db:Status-Status}\n", ...names]);
  const installed = new Set(
    r.stdout.split("\n").filter((l) => l.endsWith(" installed")).map((l) => l.split(" ")[0]),
  );
  return names.filter((n) => !installed.has(n));
}

function fail(message: string): never {
  console.error(`esflow setup: ${message}`);
  Deno.exit(2);
}

if (import.meta.main) {
  const what = Deno.args[0];
  if (!(what in NEEDS)) fail(`usage: deno run -A tools/setup.ts train|test|npm`);
  if (Deno.env.get("ESFLOW_SKIP_SETUP") !== "1" && Deno.build.os === "linux") {
    const hasDpkg = (await run("dpkg-query", ["--version"])).ok;
    if (hasDpkg) {
      const needs = NEEDS[what];
      const missing = await missingPackages(needs.map(([n]) => n));
      if (missing.length > 0) {
        const line = `apt-get install -y ${missing.join(" ")}`;
        const why = needs.filter(([n]) => missing.includes(n)).map(([n, w]) => `${n} (${w})`);
        if (Deno.uid() !== 0) {
          fail(`missing ${why.join(", ")}; install them with: sudo ${line}`);
        }
        console.error(`esflow setup: installing ${missing.join(", ")} (apt-get)…`);
        const env = { DEBIAN_FRONTEND: "noninteractive" };
        const update = await run("apt-get", ["update", "-qq"], env);
        const install = update.ok
          ? await run("apt-get", ["install", "-y", "-qq", ...missing], env)
          : update;
        if (!install.ok) {
          const last = install.stderr.trim().split("\n").pop() ?? "";
          fail(`apt-get could not install ${missing.join(" ")}: ${last}; run: ${line}`);
        }
      }
    }
  }
  // The npm packages the tools import, resolved now rather than as "Download …" lines in the
  // middle of the first command's output.
  // deno.json's nodeModulesDir is "manual" so that `deno task` does not fetch them itself, ~110
  // "Download …" lines before anything of esflow's.
  const fresh = await Deno.stat(new URL("../node_modules/.deno", import.meta.url)).then(
    () => false,
    () => true,
  );
  if (fresh) {
    console.error(
      "esflow setup: fetching the npm packages (once: yaml, zod, hono, the tokenizers…)",
    );
  }
  const install = await run(Deno.execPath(), ["install", "-q"]);
  if (!install.ok) {
    fail(`deno install failed: ${install.stderr.trim().split("\n").pop() ?? ""}`);
  }
  // The native kernels are compiled once per machine and cached; build them now, so the parallel
  // test files (or the first iteration) find them ready. A machine that cannot build them still
  // trains on WebGPU; the error surfaces where the CPU backend is chosen.
  try {
    const { buildLibrary } = await import("../kernels/cpu/native.ts");
    await buildLibrary();
  } catch { /* reported by the command that needs the CPU backend */ }
}
