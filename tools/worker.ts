/**
 * `deno task worker`: a distributed ES worker. It serves the run a coordinator
 * (`deno task train PIPELINE --redis URL`) announces in Redis: claims member ranges, evaluates
 * them on this machine's WebGPU adapter, and publishes their fitness. Start any number, on any
 * machine that sees the run dir (for the bootstrap checkpoint) and the pipeline's files.
 *
 *   deno task worker --redis URL [--run NAME] [--quiet]
 *
 * URL: redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] or unix://[[USER]:PASSWORD@]/PATH.sock[?db=N].
 * It exits 0 when the run is done; 2 with one line when Redis is gone or its weights diverge.
 *
 * @module
 */
import { parseFlags, runMain } from "./cli.ts";
import { UserError } from "../pipeline/errors.ts";
import { runWorker } from "../pipeline/distributed.ts";
import { acquireDevice, parseBackend } from "../kernels/backend.ts";

const USAGE = "deno task worker --redis URL [--run NAME] [--backend auto|webgpu|cpu] [--quiet]";

if (import.meta.main) {
  await runMain("worker", async () => {
    const { values, positionals } = parseFlags(Deno.args, {
      redis: { type: "string" },
      run: { type: "string" },
      quiet: { type: "boolean" },
      backend: { type: "string" },
    }, USAGE);
    const backend = values.backend === undefined ? undefined : parseBackend(values.backend);
    if (!values.redis || positionals.length > 0) throw new UserError(`usage: ${USAGE}`);
    const log = (s: string) => values.quiet ? undefined : console.log(`esflow worker: ${s}`);
    const gpu = await acquireDevice({ backend });
    log(`backend ${gpu.backend} on ${gpu.name}`);
    const s = await runWorker(gpu, { url: values.redis, run: values.run, log });
    // Always printed: tests and operators read who did what from this line.
    console.log(
      `esflow worker: run ${s.run} ${s.status}: ${s.consumer} evaluated ${s.members} members in ` +
        `${s.ranges} ranges, applied ${s.updates} updates, θ at iteration ${s.iteration}`,
    );
    gpu.destroy();
  });
}
