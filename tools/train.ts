/**
 * `deno task train`: ES training from a pipeline YAML (the embedded default with no argument).
 *
 *   deno task train [PIPELINE] [--iterations N] [--out DIR] [--seed N] [--resume DIR] [--quiet]
 *                   [--backend auto|webgpu|cpu] [--allow-backend-change]
 *                   [--status-port N] [--status-host H] [--no-status]
 *                   [--redis URL] [--no-local-eval] [--no-publish-checkpoints]
 *
 * `--iterations` is the total: `train --iterations 3 --out d` then `train --resume d
 * --iterations 6` ends where `train --iterations 6` ends. `--resume DIR` takes the pipeline
 * and the seed from the run dir (run.json); a pipeline or `--seed` that contradicts them is an
 * error. Bad input prints one line naming the file:line:col and exits with code 2, before
 * anything is written. A resume that cannot continue the same trajectory (another pipeline,
 * corpus, backend, damaged weights) refuses the same way.
 *
 * What it shows while it works is tools/progress.ts: a stage line from the start, then one line
 * per iteration (redrawn in place on a terminal).
 *
 * @module
 */
import { type CommandHelp, type DocumentedFlag, intFlag, parseFlags, runMain } from "./cli.ts";
import { formatDuration, formatEval, stdoutSink, TrainProgress } from "./progress.ts";
import { UserError } from "../errors.ts";
import {
  DEFAULT_PIPELINE_PATH,
  type LoadedPipeline,
  loadPipelineFile,
  loadPipelineText,
  type PipelineOverrides,
} from "../pipeline/load.ts";
import { resolvePipeline } from "../pipeline/resolve.ts";
import { type MetricsLine, runTraining } from "../pipeline/run.ts";
import { recordedRun } from "../pipeline/run_dir.ts";
import { checkRunFits } from "../pipeline/limits.ts";
import { acquireDevice, parseBackend, resolveBackend } from "../kernels/backend.ts";
import { paramCount } from "../model/presets.ts";
import type { Coordinator } from "../pipeline/distributed.ts";
import { parseStatusPort, startTrainingStatus, withStatusHooks } from "../server/train_status.ts";

/** train's flags: the parser, the usage line and `--help` all come from this table. */
export const TRAIN_FLAGS = {
  iterations: {
    type: "string",
    value: "N",
    help: "total iterations of the run (with --resume too: the total, not the number to add)",
    default: "the pipeline's iterations",
  },
  out: {
    type: "string",
    value: "DIR",
    help: "where the run writes metrics.jsonl, checkpoints/ and final/",
    default: "the pipeline's output.dir, else runs/NAME",
  },
  seed: {
    type: "string",
    value: "N",
    help: "the run seed: noise, data subsets, random init",
    default: "the pipeline's seed; with --resume the run's",
  },
  resume: {
    type: "string",
    value: "DIR",
    help: "continue the run in DIR from its latest checkpoint, with its own pipeline and seed",
    default: "a new run",
  },
  quiet: { type: "boolean", help: "print only errors, notes and the status server's address" },
  backend: {
    type: "string",
    value: "auto|webgpu|cpu",
    help: "where the kernels run; auto: a real GPU's WebGPU, else the native CPU backend",
    default: "the pipeline's backend, auto",
  },
  "allow-backend-change": {
    type: "boolean",
    help: "resume on another backend than the run's (the trajectory changes in the last bits)",
  },
  "status-port": {
    type: "string",
    value: "N",
    help: "the status server on exactly this port; 0 = any free port",
    default: "output.status.port (8787), else the next free port after it",
  },
  "status-host": {
    type: "string",
    value: "HOST",
    help: "the status server's interface; 0.0.0.0 exposes it beyond this machine",
    default: "127.0.0.1",
  },
  "no-status": { type: "boolean", help: "run without the status server" },
  redis: {
    type: "string",
    value: "URL",
    help: "coordinate distributed workers (deno task worker) through Redis at URL",
    default: "one process, no Redis",
  },
  "no-local-eval": {
    type: "boolean",
    help: "with --redis: leave every member to the workers",
  },
  "no-publish-checkpoints": {
    type: "boolean",
    help: "with --redis: keep checkpoints out of Redis; a late worker replays the whole ledger",
  },
} satisfies Record<string, DocumentedFlag>;

/** What `deno task train --help` says besides the flags. */
export const TRAIN_HELP: CommandHelp = {
  command: "deno task train",
  args: "[PIPELINE.yaml]",
  about: "Evolution Strategies training of a Qwen3-style model, as the pipeline file says.",
  positionals: [[
    "PIPELINE.yaml",
    "the pipeline to train (default: configs/pipelines/tiny-austen.yaml; with --resume, the run's)",
  ]],
  example: [
    "deno task train configs/pipelines/micro-smoke.yaml --iterations 20 --out runs/smoke",
    "deno task train --resume runs/smoke --iterations 40",
  ],
};

/**
 * The pipeline and seed a run uses. With `--resume DIR` they come from the run dir: the
 * pipeline text recorded in run.json unless a file is given (which must then match it, as
 * the resume checks), and the run's seed, which `--seed` may repeat but not change.
 */
async function loadRun(o: {
  file?: string;
  resume?: string;
  seed?: number;
  overrides: PipelineOverrides;
}): Promise<{ loaded: LoadedPipeline; from?: string }> {
  const recorded = o.resume === undefined ? null : await recordedRun(o.resume);
  let seed = o.seed;
  if (recorded) {
    if (seed !== undefined && seed !== recorded.seed) {
      throw new UserError(
        `--seed ${seed} contradicts the run in ${o.resume}, trained with seed ${recorded.seed} ` +
          `(${recorded.from}); a resume takes the run's seed: drop --seed, or start a new run ` +
          `with --out`,
      );
    }
    seed = recorded.seed;
  }
  const overrides = { ...o.overrides, seed };
  if (o.file === undefined && recorded?.pipeline) {
    const { file, text } = recorded.pipeline;
    return { loaded: loadPipelineText(text, { file, overrides }), from: `${o.resume}/run.json` };
  }
  return { loaded: await loadPipelineFile(o.file ?? DEFAULT_PIPELINE_PATH, { overrides }) };
}

if (import.meta.main) {
  await runMain("train", async () => {
    const { values, positionals } = parseFlags(Deno.args, TRAIN_FLAGS, TRAIN_HELP);
    const usage = `see deno task train --help`;
    if (positionals.length > 1) throw new UserError(`one pipeline file at most; ${usage}`);
    if (values.resume && values.out && values.resume !== values.out) {
      throw new UserError("--resume DIR continues the run in DIR; drop --out or give the same dir");
    }
    const seed = values.seed === undefined ? undefined : Number(values.seed);
    if (seed !== undefined && (!Number.isSafeInteger(seed) || seed < 0)) {
      throw new UserError(`--seed must be a non-negative integer, got "${values.seed}"`);
    }
    // Every flag is checked before any file is read or a device starts.
    const statusPort = values["status-port"] === undefined
      ? undefined
      : parseStatusPort(values["status-port"]);
    for (const flag of ["no-local-eval", "no-publish-checkpoints"] as const) {
      if (values[flag] && !values.redis) throw new UserError(`--${flag} needs --redis URL`);
    }
    const backendFlag = values.backend === undefined ? undefined : parseBackend(values.backend);
    const iterations = values.iterations === undefined
      ? undefined
      : intFlag(values.iterations, "iterations", 1);

    // From here on something shows what is happening, from the first second.
    const progress = values.quiet ? null : new TrainProgress(stdoutSink());
    const log = (s: string) => progress?.log(s);
    const warn = (s: string) => progress ? progress.log(s, { stderr: true }) : console.error(s);
    try {
      progress?.stage("loading the pipeline: corpus, tokenizer, model…");
      const { loaded, from } = await loadRun({
        file: positionals[0],
        resume: values.resume,
        seed,
        overrides: { iterations, out: values.resume ?? values.out, backend: backendFlag },
      });
      const resolved = await resolvePipeline(loaded);
      for (const w of resolved.warnings) warn(`esflow train: warning: ${w}`);
      const spec = resolved.spec;
      const { backend } = await resolveBackend(spec.backend);
      progress?.stage(
        backend === "cpu"
          ? "starting the cpu backend (loading the native kernels)…"
          : "starting WebGPU (requesting the adapter)…",
      );
      const gpu = await acquireDevice({ backend: spec.backend });
      progress?.stage("planning device memory…");
      // Sizes against this device and machine, before anything is allocated.
      const plan = await checkRunFits(gpu, resolved);
      log(
        `esflow train ${spec.name}: ${loaded.file}${from ? ` (as recorded in ${from})` : ""}\n` +
          `  model ${spec.model.type} (${
            (paramCount(resolved.config) / 1e6).toFixed(2)
          }M parameters, ${resolved.model.source})\n` +
          `  backend ${gpu.backend} on ${gpu.name}\n  output ${resolved.outDir}`,
      );
      // The status server (server/), before training: a port asked for and taken fails here.
      progress?.stage("starting the status server…");
      const status = values["no-status"] ? null : await startTrainingStatus(resolved, {
        device: gpu,
        host: values["status-host"],
        port: statusPort,
        plannedMemoryBytes: plan?.bytes.total ?? null,
      });

      // Distributed ES (pipeline/distributed.ts): with --redis this process is the coordinator.
      // Loaded only with --redis: the Redis client is most of train's start-up time.
      const coordinator: Coordinator | null = values.redis
        ? await (await import("../pipeline/distributed.ts")).Coordinator.start(resolved, {
          url: values.redis,
          localEval: !values["no-local-eval"],
          publishCheckpoints: !values["no-publish-checkpoints"],
          log: (s) => log(s),
          backend: gpu.backend,
        })
        : null;
      if (coordinator) {
        log(
          `  coordinating run ${coordinator.run} at ${coordinator.bus.target.display} ` +
            `(samples and files published for workers: ${coordinator.bootstrapBytes} bytes sent)`,
        );
      }

      let stop = false;
      const onSignal = () => {
        if (stop) {
          progress?.end();
          Deno.exit(130);
        }
        stop = true;
        warn("esflow train: stopping after this iteration (Ctrl-C again to quit now)");
      };
      Deno.addSignalListener("SIGINT", onSignal);

      // The first iteration of this process compiles every kernel on WebGPU (Mesa caches them
      // across processes; a cold cache takes a minute on lavapipe).
      let first: number | undefined;
      const compiling = (t: number) => gpu.backend === "webgpu" && t === first;
      progress?.stage("tokenizing the samples and uploading θ…");
      const t0 = performance.now();
      const distributed = coordinator?.runOptions();
      const summary = await runTraining(
        gpu,
        resolved,
        withStatusHooks(status?.live, {
          resume: values.resume !== undefined,
          allowBackendChange: values["allow-backend-change"],
          plan,
          onNote: (line) => warn(`esflow train: note: ${line}`),
          // On stderr even with --quiet: with port 0 or a generated token it is the only way in.
          // Printed once the run passed its checks, so a refused resume is still one line.
          onStart: ({ iteration }) => {
            if (status) warn(`esflow train: ${status.banner}`);
            first = iteration;
            progress?.stage(
              `iteration ${iteration}: ${compiling(iteration) ? "compiling kernels" : "starting"}…`,
              { log: compiling(iteration) },
            );
          },
          shouldStop: () => stop,
          ...distributed,
          // Member by member inside an iteration: only a terminal shows it.
          ...(progress && stdoutSink().tty
            ? {
              onMembers: (p: { iteration: number; done: number; of: number }) =>
                progress.members({ ...p, compiling: compiling(p.iteration) }),
            }
            : {}),
          onIteration: (line: MetricsLine, o) => progress?.iteration(line, o.total),
          onCheckpoint: async (dir, iteration) => {
            log(`checkpoint ${dir}`);
            // With --redis: published for workers that join late.
            await distributed?.onCheckpoint?.(dir, iteration);
          },
        }),
      ).catch(async (e) => {
        // The end event reaches the watching clients before the server (and train) goes.
        status?.live.fail(e);
        await status?.close();
        throw e;
      });
      status?.live.finish(summary);
      await coordinator?.finish({ stopped: summary.stopped });
      progress?.end();
      Deno.removeSignalListener("SIGINT", onSignal);
      const l = summary.lastLine;
      if (summary.alreadyDone) {
        log(
          `nothing to train: ${summary.finalDir} already holds all ${summary.iterations} iterations`,
        );
      } else {
        const evalLoss = progress?.evalLoss;
        log(
          `${summary.stopped ? "stopped" : "done"}: ${summary.iterations} iterations in ${
            formatDuration((performance.now() - t0) / 1000)
          }` +
            (l ? `, fitness ${l.fitness_mean.toFixed(4)}, ${formatEval(evalLoss)}` : "") +
            `\n  ${
              summary.stopped
                ? `checkpoint in ${summary.outDir}/checkpoints`
                : `model in ${summary.finalDir}`
            }`,
        );
      }
      gpu.destroy();
      await status?.close();
    } finally {
      progress?.end();
    }
  });
}
