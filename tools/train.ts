/**
 * `deno task train`: ES training from a pipeline YAML (the embedded default with no argument).
 *
 *   deno task train [PIPELINE] [--iterations N] [--out DIR] [--seed N] [--resume DIR] [--quiet]
 *                   [--backend auto|webgpu|cpu] [--allow-backend-change]
 *                   [--status-port N] [--status-host H] [--no-status]
 *
 * `--iterations` is the total: `train --iterations 3 --out d` then `train --resume d
 * --iterations 6` ends where `train --iterations 6` ends. Bad input prints one line naming the
 * file:line:col and exits with code 2, before anything is written. A resume that cannot continue
 * the same trajectory (another pipeline, corpus, backend, damaged weights) refuses the same way.
 *
 * @module
 */
// @ts-types="npm:@types/cli-progress@3.11.6"
import cliProgress from "cli-progress";
import { intFlag, parseFlags, runMain } from "./cli.ts";
import { UserError } from "../pipeline/errors.ts";
import { DEFAULT_PIPELINE_PATH, loadPipelineFile } from "../pipeline/load.ts";
import { resolvePipeline } from "../pipeline/resolve.ts";
import { type MetricsLine, runTraining } from "../pipeline/run.ts";
import { checkRunFits } from "../pipeline/limits.ts";
import { acquireDevice, parseBackend } from "../kernels/backend.ts";
import { paramCount } from "../model/presets.ts";
import type { Coordinator } from "../pipeline/distributed.ts";
import { parseStatusPort, startTrainingStatus, withStatusHooks } from "../server/train_status.ts";

const USAGE =
  "deno task train [PIPELINE.yaml] [--iterations N] [--out DIR] [--seed N] [--resume DIR] [--quiet] " +
  "[--backend auto|webgpu|cpu] [--allow-backend-change] " +
  "[--status-port N] [--status-host H] [--no-status]";

function fmtSeconds(s: number): string {
  if (!Number.isFinite(s)) return "?";
  const m = Math.floor(s / 60);
  return m > 0 ? `${m}m${String(Math.round(s % 60)).padStart(2, "0")}s` : `${s.toFixed(1)}s`;
}

if (import.meta.main) {
  await runMain("train", async () => {
    const { values, positionals } = parseFlags(Deno.args, {
      iterations: { type: "string" },
      out: { type: "string" },
      seed: { type: "string" },
      resume: { type: "string" },
      quiet: { type: "boolean" },
      backend: { type: "string" },
      // Resume on another backend than the run's (its trajectory changes in the last bits).
      "allow-backend-change": { type: "boolean" },
      // The status server (server/): port (0 = a free one), host, off.
      "status-port": { type: "string" },
      "status-host": { type: "string" },
      "no-status": { type: "boolean" },
      // Distributed ES (pipeline/distributed.ts): coordinate workers through Redis.
      redis: { type: "string" },
      "no-local-eval": { type: "boolean" },
    }, USAGE);
    if (positionals.length > 1) throw new UserError(`one pipeline file at most; usage: ${USAGE}`);
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
    if (values["no-local-eval"] && !values.redis) {
      throw new UserError("--no-local-eval needs --redis URL");
    }
    const backendFlag = values.backend === undefined ? undefined : parseBackend(values.backend);
    const iterations = values.iterations === undefined
      ? undefined
      : intFlag(values.iterations, "iterations", 1);
    const file = positionals[0] ?? DEFAULT_PIPELINE_PATH;
    const loaded = await loadPipelineFile(file, {
      overrides: { iterations, seed, out: values.resume ?? values.out, backend: backendFlag },
    });
    const resolved = await resolvePipeline(loaded);
    for (const w of resolved.warnings) console.error(`esflow train: warning: ${w}`);
    const gpu = await acquireDevice({ backend: resolved.spec.backend });
    const spec = resolved.spec;
    // Sizes against this device and machine, before anything is allocated.
    const plan = await checkRunFits(gpu, resolved);
    const log = (s: string) => values.quiet ? undefined : console.log(s);
    log(
      `esflow train ${spec.name}: ${loaded.file}\n` +
        `  model ${spec.model.type} (${
          (paramCount(resolved.config) / 1e6).toFixed(2)
        }M parameters, ${resolved.model.source})\n` +
        `  backend ${gpu.backend} on ${gpu.name}\n  output ${resolved.outDir}`,
    );
    // The status server (server/), before training: a taken port fails here, nothing trained.
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
        log,
        backend: gpu.backend,
      })
      : null;
    if (coordinator) {
      log(`  coordinating run ${coordinator.run} at ${coordinator.bus.target.display}`);
    }

    let stop = false;
    const onSignal = () => {
      if (stop) Deno.exit(130);
      stop = true;
      console.error("esflow train: stopping after this iteration (Ctrl-C again to quit now)");
    };
    Deno.addSignalListener("SIGINT", onSignal);

    const tty = Deno.stdout.isTerminal() && !values.quiet;
    const bar = tty
      ? new cliProgress.SingleBar({
        format:
          "iter {value}/{total} |{bar}| fitness {fitness} | eval {eval} | {tps} tok/s | ETA {eta_formatted}",
        hideCursor: true,
      }, cliProgress.Presets.shades_classic)
      : null;
    let lastEval = "-";
    let started = false;
    let firstIter: number | undefined;
    const t0 = performance.now();
    const summary = await runTraining(
      gpu,
      resolved,
      withStatusHooks(status?.live, {
        resume: values.resume !== undefined,
        allowBackendChange: values["allow-backend-change"],
        plan,
        onNote: (line) => console.error(`esflow train: note: ${line}`),
        // On stderr even with --quiet: with port 0 or a generated token it is the only way in.
        // Printed once the run passed its checks, so a refused resume is still one line.
        onStart: () => status && console.error(`esflow train: ${status.banner}`),
        shouldStop: () => stop,
        ...coordinator?.runOptions(),
        onIteration: (line: MetricsLine, o) => {
          if (line.eval_loss !== undefined) lastEval = line.eval_loss.toFixed(4);
          const fitness = line.fitness_mean.toFixed(4), tps = Math.round(line.tokens_per_s);
          if (bar) {
            if (!started) bar.start(o.total, line.iter, { fitness, eval: lastEval, tps });
            started = true;
            bar.update(line.iter + 1, { fitness, eval: lastEval, tps });
          } else {
            const elapsed = (performance.now() - t0) / 1000;
            firstIter ??= line.iter;
            const eta = (elapsed / (line.iter + 1 - firstIter)) * (o.total - line.iter - 1);
            log(
              `iter ${line.iter + 1}/${o.total} fitness ${fitness} (max ${
                line.fitness_max.toFixed(4)
              }) ` +
                `eval ${lastEval} ${tps} tok/s ${line.seconds.toFixed(2)}s ETA ${fmtSeconds(eta)}`,
            );
          }
        },
        onCheckpoint: (dir) => {
          if (!bar) log(`checkpoint ${dir}`);
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
    bar?.stop();
    Deno.removeSignalListener("SIGINT", onSignal);
    const l = summary.lastLine;
    if (summary.alreadyDone) {
      log(
        `nothing to train: ${summary.finalDir} already holds all ${summary.iterations} iterations`,
      );
    } else {
      log(
        `${summary.stopped ? "stopped" : "done"}: ${summary.iterations} iterations in ${
          fmtSeconds((performance.now() - t0) / 1000)
        }` + (l ? `, fitness ${l.fitness_mean.toFixed(4)}, held-out loss ${lastEval}` : "") +
          `\n  ${
            summary.stopped
              ? `checkpoint in ${summary.outDir}/checkpoints`
              : `model in ${summary.finalDir}`
          }`,
      );
    }
    gpu.destroy();
    await status?.close();
  });
}
