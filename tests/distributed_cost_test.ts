// tools/distributed_cost.ts: a bad flag is one line and exit 2; a short run of a micro pipeline
// reports the bootstrap bytes, the bytes per iteration and the seconds, with the CPU model.
import { assert, assertEquals, tempDir } from "./helpers.ts";

const ROOT = new URL("..", import.meta.url).pathname;

async function cost(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "tools/distributed_cost.ts", ...args],
    cwd: ROOT,
    stdin: "null",
    env: { NO_COLOR: "1" },
  }).output();
  const d = new TextDecoder();
  return { code: r.code, out: d.decode(r.stdout), err: d.decode(r.stderr) };
}

Deno.test("distributed_cost: bad flags are one line and exit 2", async () => {
  for (
    const [args, re] of [
      [
        ["--iterations", "1"],
        /^esflow distributed_cost: --iterations must be an integer of at least 2, got "1"$/,
      ],
      [
        ["--processes", "1,x"],
        /^esflow distributed_cost: --processes must list integers from 0 to 16/,
      ],
      [["--backend", "tpu"], /^esflow distributed_cost: --backend: unknown backend "tpu"/],
    ] as const
  ) {
    const r = await cost([...args]);
    assertEquals(r.code, 2, r.err);
    const lines = r.err.trim().split("\n");
    assertEquals(lines.length, 1, r.err);
    assert(re.test(lines[0]), r.err);
  }
});

Deno.test("distributed_cost: a micro run with 2 processes reports what crossed Redis", async () => {
  const dir = await tempDir("esflow_cost_test_");
  try {
    await Deno.writeTextFile(
      `${dir}/p.yaml`,
      `
name: cost-test
seed: 5
iterations: 3
dataset: { type: text_lines, path: ${ROOT}data/pride_and_prejudice.txt, max_lines: 100, samples_per_iteration: 8, holdout: 8 }
tokenizer: { type: bytes }
model: { type: qwen3, preset: micro, init: random }
perturb: { type: gaussian, population: 8, sigma: 0.01, antithetic: false }
fitness: { type: log_likelihood, micro_batch: 8, max_len: 32 }
shape: { type: rank }
update: { type: es, alpha: 0.05, nes: false }
`,
    );
    const r = await cost([`${dir}/p.yaml`, "--iterations", "3", "--processes", "0,2", "--json"]);
    assertEquals(r.code, 0, r.err);
    const report = JSON.parse(r.out);
    assert(typeof report.cpu === "string" && report.cpu.length > 0, r.out);
    assertEquals(report.rows.map((x: { processes: number }) => x.processes), [0, 2]);
    const [plain, two] = report.rows;
    assertEquals([plain.bootstrap_bytes, plain.bytes_per_iteration], [0, 0]);
    // The samples go up once and down once (a JSON array of 100 lines, some KB each way).
    assert(two.bootstrap_bytes > 2 * 4000, r.out);
    assert(two.bytes_per_iteration > 0 && two.bytes_per_iteration < 100_000, r.out);
    // A micro iteration is shorter than a worker's start: it may join after the last one.
    assert(
      two.iterations_measured > 0
        ? two.seconds_per_iteration > 0
        : two.seconds_per_iteration === null,
      r.out,
    );
    assert(plain.seconds_per_iteration > 0 && plain.iterations_measured === 2, r.out);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
