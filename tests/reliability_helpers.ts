// Helpers for the reliability tests: the CLI with an environment, a micro-smoke pipeline written
// with absolute paths and chosen settings, one-line error checks, and what a run dir holds.
import { assert, assertEquals } from "./helpers.ts";

export const ROOT = new URL("..", import.meta.url).pathname;
export const CORPUS = `${ROOT}data/pride_and_prejudice.txt`;

/** What a finished command printed. */
export interface CliResult {
  code: number;
  signal: Deno.Signal | null;
  stdout: string;
  stderr: string;
}

/** Runs `deno run -A args…` from the repo root with `env` added; waits for it to exit. */
export async function cli(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...args],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp", ...env },
  }).output();
  const dec = new TextDecoder();
  return {
    code: out.code,
    signal: out.signal,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
  };
}

/** `deno task train` on the CPU backend without a status server. */
export function train(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  return cli(["tools/train.ts", ...args, "--backend", "cpu", "--no-status", "--quiet"], env);
}

/**
 * Asserts the command failed the way bad input must: exit 2, exactly one line on stderr (after
 * `notes`, lines starting "esflow train: note:"), no stack trace; returns the line.
 */
export function oneLine(r: CliResult, o: { says?: (string | RegExp)[] } = {}): string {
  const lines = r.stderr.trimEnd().split("\n").filter((l) => !/^esflow \w+: note: /.test(l));
  assertEquals(r.code, 2, `exit code; stderr:\n${r.stderr}`);
  assertEquals(lines.length, 1, `one line on stderr, got:\n${r.stderr}`);
  assert(!/\bat .*:\d+:\d+\)?$/m.test(r.stderr), `no stack trace:\n${r.stderr}`);
  for (const s of o.says ?? []) {
    assert(
      typeof s === "string" ? lines[0].includes(s) : s.test(lines[0]),
      `the line should contain ${s}:\n${lines[0]}`,
    );
  }
  return lines[0];
}

/** The micro-smoke settings a test may change. */
export interface SmokeOptions {
  iterations?: number;
  checkpointEvery?: number;
  corpus?: string;
  sigma?: number | string;
  alpha?: number | string;
  population?: number | string;
  microBatch?: number;
  samples?: number;
  /** More dataset keys, as YAML lines under dataset: (e.g. "allow_special_file: true"). */
  datasetExtra?: string[];
  /** model: lines instead of the preset (e.g. "config: /abs/config.json"). */
  model?: string[];
  /** output.status.port. */
  statusPort?: number;
}

/** The micro-smoke pipeline as YAML text, paths absolute. */
export function smokeYaml(o: SmokeOptions = {}): string {
  return [
    "name: micro-smoke",
    "seed: 1234",
    `iterations: ${o.iterations ?? 3}`,
    "dataset:",
    "  type: text_lines",
    `  path: ${o.corpus ?? CORPUS}`,
    "  max_lines: 200",
    `  samples_per_iteration: ${o.samples ?? 8}`,
    "  holdout: 8",
    ...(o.datasetExtra ?? []).map((l) => `  ${l}`),
    "tokenizer:",
    "  type: bytes",
    "model:",
    "  type: qwen3",
    ...(o.model ?? ["preset: micro", "init: random"]).map((l) => `  ${l}`),
    "perturb:",
    "  type: gaussian",
    `  population: ${o.population ?? 4}`,
    `  sigma: ${o.sigma ?? 0.01}`,
    "  antithetic: false",
    "fitness:",
    "  type: log_likelihood",
    `  micro_batch: ${o.microBatch ?? 8}`,
    "  max_len: 32",
    "shape:",
    "  type: rank",
    "update:",
    "  type: es",
    `  alpha: ${o.alpha ?? 0.05}`,
    "  nes: false",
    "output:",
    `  checkpoint_every: ${o.checkpointEvery ?? 1}`,
    "  eval_every: 1",
    `  status: { port: ${o.statusPort ?? 0} }`,
    "",
  ].join("\n");
}

/** Writes {@link smokeYaml} to `dir/name` and returns its path. */
export async function writeSmoke(dir: string, o: SmokeOptions = {}, name = "p.yaml") {
  const file = `${dir}/${name}`;
  await Deno.writeTextFile(file, smokeYaml(o));
  return file;
}

/** Every path under `dir`, relative, sorted (directories end with /). */
export async function listTree(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  let entries: Deno.DirEntry[] = [];
  try {
    entries = await Array.fromAsync(Deno.readDir(`${dir}/${prefix}`));
  } catch {
    return out;
  }
  for (const e of entries) {
    const rel = `${prefix}${e.name}`;
    if (e.isDirectory) out.push(`${rel}/`, ...(await listTree(dir, `${rel}/`)));
    else out.push(rel);
  }
  return out.sort();
}

/** Leftovers of an interrupted atomic write anywhere under `dir` (none may remain). */
export async function leftovers(dir: string): Promise<string[]> {
  return (await listTree(dir)).filter((p) => /(^|\/)\.[^/]+\.(tmp|old)\/?$|\.tmp\/?$/.test(p));
}

/** Copies a directory tree. */
export async function copyDir(from: string, to: string): Promise<void> {
  await Deno.mkdir(to, { recursive: true });
  for await (const e of Deno.readDir(from)) {
    if (e.isDirectory) await copyDir(`${from}/${e.name}`, `${to}/${e.name}`);
    else await Deno.copyFile(`${from}/${e.name}`, `${to}/${e.name}`);
  }
}

/** The bytes of a file. */
export function bytes(path: string): Promise<Uint8Array> {
  return Deno.readFile(path);
}

/** Whether two files hold the same bytes. */
export async function sameFile(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([bytes(a), bytes(b)]);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

/** The metrics lines of a run dir. */
export async function metricsOf(dir: string): Promise<Record<string, number>[]> {
  const text = await Deno.readTextFile(`${dir}/metrics.jsonl`).catch(() => "");
  return text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
}

/**
 * Asserts run dir `b` ended where `a` did: final/'s files byte for byte, and the same
 * iterations with the same fitness and held-out loss in metrics.jsonl.
 */
export async function assertSameRun(a: string, b: string, what: string): Promise<void> {
  for (const f of ["model.safetensors", "config.json", "state.json"]) {
    assert(await sameFile(`${a}/final/${f}`, `${b}/final/${f}`), `${what}: final/${f} differs`);
  }
  const [ma, mb] = await Promise.all([metricsOf(a), metricsOf(b)]);
  assertEquals(mb.map((l) => l.iter), ma.map((l) => l.iter), `${what}: iterations`);
  assertEquals(mb.map((l) => l.fitness_mean), ma.map((l) => l.fitness_mean), `${what}: fitness`);
  assertEquals(mb.map((l) => l.eval_loss), ma.map((l) => l.eval_loss), `${what}: held-out loss`);
}

/** Whether a path exists. */
export function exists(path: string): Promise<boolean> {
  return Deno.stat(path).then(() => true, () => false);
}
