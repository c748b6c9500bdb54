/**
 * `deno task bench:eval [--runs N] [--backend all|cpu|webgpu]`: a first eval at Qwen3's real
 * vocabulary, the measurement behind the README's eval table.
 *
 * It writes a tiny model with vocab_size 151936 (random weights, seed 3) and 24 lines of Pride and
 * Prejudice (410 scored Qwen3 tokens) into a temporary directory, then times `tools/eval.ts
 * --tokenizer qwen3` as a fresh process each time, as a user's first eval would run: on the CPU
 * backend; on WebGPU with Mesa's shader cache off (`MESA_SHADER_CACHE_DISABLE=true`, "cold"); and
 * on WebGPU with the cache filled by a run before ("warm"). Each line gives the wall-clock
 * seconds of every run, the backend and the device the eval reported, and its fitness (the same
 * model and text on every backend, so the fitness agrees to ~1e-6).
 *
 * @module
 */
import { type CommandHelp, type DocumentedFlag, intFlag, parseFlags, runMain } from "./cli.ts";
import { UserError } from "../errors.ts";
import { getPreset } from "../model/presets.ts";
import { saveCheckpoint } from "../model/checkpoint.ts";
import { randomInit } from "../model/weights.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** One eval as its own process: wall seconds and what it printed. */
async function timedEval(
  dir: string,
  backend: "cpu" | "webgpu",
  env: Record<string, string> = {},
): Promise<{ seconds: number; backend: string; device: string; fitness: number }> {
  const t0 = performance.now();
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      `${ROOT}tools/eval.ts`,
      "--model",
      `${dir}/model`,
      "--text",
      `${dir}/prose.txt`,
      "--tokenizer",
      "qwen3",
      "--backend",
      backend,
    ],
    cwd: ROOT,
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const seconds = (performance.now() - t0) / 1000;
  const stderr = new TextDecoder().decode(out.stderr).trim();
  if (!out.success) {
    throw new UserError(`eval --backend ${backend} failed: ${stderr.split("\n")[0]}`);
  }
  const r = JSON.parse(new TextDecoder().decode(out.stdout));
  return { seconds, backend: r.backend, device: r.device, fitness: r.fitness };
}

/** bench:eval's flags: the parser, the usage line and `--help` all come from this table. */
export const BENCH_EVAL_FLAGS = {
  runs: { type: "string", value: "N", help: "timed runs of each case", default: "2" },
  backend: {
    type: "string",
    value: "all|cpu|webgpu",
    help: "which cases: the CPU backend, WebGPU cold and warm, or all three",
    default: "all",
  },
} satisfies Record<string, DocumentedFlag>;

/** What `deno task bench:eval --help` says besides the flags. */
export const BENCH_EVAL_HELP: CommandHelp = {
  command: "deno task bench:eval",
  about: "Times a first eval at vocab 151936, each run a fresh process: CPU, WebGPU cold and warm.",
  example: "deno task bench:eval --runs 3",
};

async function main(): Promise<void> {
  const { values } = parseFlags(Deno.args, BENCH_EVAL_FLAGS, BENCH_EVAL_HELP);
  const runs = intFlag(values.runs, "runs", 2);
  const which = values.backend ?? "all";
  if (!["all", "cpu", "webgpu"].includes(which)) {
    throw new UserError(`--backend ${which}: give all, cpu or webgpu`);
  }
  const dir = await Deno.makeTempDir({ prefix: "esflow-bench-eval-" });
  try {
    const config = { ...getPreset("tiny"), vocabSize: 151936 };
    await saveCheckpoint(`${dir}/model`, { config, tensors: randomInit(config, { seed: 3 }) });
    const book = await Deno.readTextFile(`${ROOT}data/pride_and_prejudice.txt`);
    const lines = book.split("\n").filter((l) => l.trim().length > 40).slice(100, 124);
    await Deno.writeTextFile(`${dir}/prose.txt`, lines.join("\n") + "\n");
    console.log(
      `eval of ${lines.length} lines of prose with a vocab-151936 tiny model, ${runs} run(s) each`,
    );
    const cases: { name: string; backend: "cpu" | "webgpu"; env?: Record<string, string> }[] = [];
    if (which !== "webgpu") cases.push({ name: "cpu", backend: "cpu" });
    if (which !== "cpu") {
      cases.push({
        name: "webgpu, cold cache",
        backend: "webgpu",
        env: { MESA_SHADER_CACHE_DISABLE: "true" },
      });
      cases.push({ name: "webgpu, warm cache", backend: "webgpu" });
    }
    for (const c of cases) {
      // The warm case's cache is filled by a run of its own first, not timed.
      if (c.name.endsWith("warm cache")) await timedEval(dir, c.backend, c.env);
      const times: number[] = [];
      let last = null;
      for (let i = 0; i < runs; i++) {
        last = await timedEval(dir, c.backend, c.env);
        times.push(last.seconds);
      }
      console.log(
        `${c.name.padEnd(20)} ${times.map((t) => `${t.toFixed(2)} s`).join(", ").padEnd(20)} ` +
          `${last!.backend}, ${last!.device}; fitness ${last!.fitness.toFixed(6)}`,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) await runMain("bench:eval", main);
