// `--help` of every task (issue 14, item 7): every flag with its default and a one-line meaning,
// and an example; the usage line names every flag (train's: --redis, --backend,
// --allow-backend-change…), since it is made from the same table the parser reads.
import { assert, assertEquals, runCli } from "./helpers.ts";
import { type CommandHelp, type Flags, formatHelp, usageLine } from "../tools/cli.ts";
import { TRAIN_FLAGS, TRAIN_HELP } from "../tools/train.ts";
import { EVAL_FLAGS, EVAL_HELP } from "../tools/eval.ts";
import { PLAN_FLAGS, PLAN_HELP } from "../tools/plan.ts";
import { SERVE_FLAGS, SERVE_HELP } from "../tools/serve.ts";
import { WORKER_FLAGS, WORKER_HELP } from "../tools/worker.ts";
import { SWEEP_FLAGS, SWEEP_HELP } from "../tools/sweep.ts";
import { BENCH_SERVER_FLAGS, BENCH_SERVER_HELP } from "../tools/bench_server.ts";
import { BENCH_EVAL_FLAGS, BENCH_EVAL_HELP } from "../tools/bench_eval.ts";

const TASKS: [script: string, flags: Flags, help: CommandHelp][] = [
  ["tools/train.ts", TRAIN_FLAGS, TRAIN_HELP],
  ["tools/eval.ts", EVAL_FLAGS, EVAL_HELP],
  ["tools/plan.ts", PLAN_FLAGS, PLAN_HELP],
  ["tools/serve.ts", SERVE_FLAGS, SERVE_HELP],
  ["tools/worker.ts", WORKER_FLAGS, WORKER_HELP],
  ["tools/sweep.ts", SWEEP_FLAGS, SWEEP_HELP],
  ["tools/bench_server.ts", BENCH_SERVER_FLAGS, BENCH_SERVER_HELP],
  ["tools/bench_eval.ts", BENCH_EVAL_FLAGS, BENCH_EVAL_HELP],
];

for (const [script, flags, help] of TASKS) {
  Deno.test(`--help of ${script}: every flag, its default and meaning, an example`, () => {
    const text = formatHelp(flags, help);
    const usage = usageLine(flags, help);
    assert(text.startsWith(`usage: ${usage}\n`), text);
    for (const [name, f] of Object.entries(flags)) {
      assert(usage.includes(`--${name}`), `the usage line names --${name}: ${usage}`);
      const row = text.split("\n").findIndex((l) => new RegExp(`^  (-\\w, )?--${name}\\b`).test(l));
      assert(row >= 0, `--${name} has a row:\n${text}`);
      // The meaning is on the flag's row, or on the next when the flag is long.
      const lines = text.split("\n");
      const said = lines[row] + " " + (lines[row + 1] ?? "");
      assert(f.help && said.includes(f.help), `--${name} says what it does:\n${said}`);
      if (f.type === "string") {
        assert(
          f.default && said.includes(`${f.default})`),
          `--${name}'s default:\n${said}`,
        );
      }
    }
    assert(/\nexamples?:\n {2}deno task /.test(text), `an example:\n${text}`);
  });
}

Deno.test("--help prints it and exits 0; a bad flag names the help", async () => {
  const r = await runCli(["tools/train.ts", "--help"]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(r.stdout.trimEnd(), formatHelp(TRAIN_FLAGS, TRAIN_HELP));
  for (const flag of ["--redis URL", "--backend auto|webgpu|cpu", "--allow-backend-change"]) {
    assert(r.stdout.split("\n")[0].includes(flag), `train's usage line names ${flag}`);
  }
  const e = await runCli(["tools/eval.ts", "-h"]);
  assertEquals(e.code, 0, e.stderr);
  assert(e.stdout.includes("--allow-tokenizer-change"), e.stdout);
  const bad = await runCli(["tools/train.ts", "--iteration", "3"]);
  assertEquals(bad.code, 2);
  assert(/--iteration.*usage: deno task train .*--redis URL/.test(bad.stderr), bad.stderr);
});
