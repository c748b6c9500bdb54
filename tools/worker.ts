/**
 * `deno task worker`: a distributed ES worker. It serves the run a coordinator
 * (`deno task train PIPELINE --redis URL`) announces in Redis: claims member ranges, evaluates
 * them on this machine's WebGPU adapter, and publishes their fitness. Start any number, on any
 * machine with the esflow checkout and a route to Redis: the pipeline, its samples and files,
 * and the run's latest checkpoint (for a worker that joins late) come through Redis into the
 * worker's own cache dir.
 *
 *   deno task worker --redis URL [--run NAME] [--cache DIR] [--quiet]
 *
 * URL: redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] or unix://[[USER]:PASSWORD@]/PATH.sock[?db=N].
 * It exits 0 when the run is done; 2 with one line when Redis is gone or its weights diverge.
 *
 * @module
 */
import { type CommandHelp, type DocumentedFlag, parseFlags, runMain, usageLine } from "./cli.ts";
import { UserError } from "../errors.ts";
import { runWorker } from "../pipeline/distributed.ts";
import { defaultWorkerCache } from "../pipeline/distributed_bootstrap.ts";
import { acquireDevice, parseBackend } from "../kernels/backend.ts";

/** worker's flags: the parser, the usage line and `--help` all come from this table. */
export const WORKER_FLAGS = {
  redis: {
    type: "string",
    value: "URL",
    help: "the coordinator's Redis: redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] or unix://…",
    default: "required",
  },
  run: {
    type: "string",
    value: "NAME",
    help: "the run to serve",
    default: "the one esflow:current names (the latest coordinator's)",
  },
  cache: {
    type: "string",
    value: "DIR",
    help: "this worker's scratch dir for the run's samples, files and checkpoint",
    default: "$XDG_CACHE_HOME/esflow/worker, else ~/.cache/esflow/worker",
  },
  quiet: { type: "boolean", help: "print only errors and the closing summary" },
  backend: {
    type: "string",
    value: "auto|webgpu|cpu",
    help: "where the kernels run; must be the coordinator's",
    default: "auto",
  },
} satisfies Record<string, DocumentedFlag>;

/** What `deno task worker --help` says besides the flags. */
export const WORKER_HELP: CommandHelp = {
  command: "deno task worker",
  synopsis: "--redis URL [--run NAME] [--cache DIR] [--backend auto|webgpu|cpu] [--quiet]",
  about: "A distributed ES worker: claims member ranges of the coordinator's run " +
    "(deno task train … --redis URL), evaluates them here and publishes their fitness.",
  example: "deno task worker --redis redis://:PW@HOST:6379 --run tiny-austen",
};

const USAGE = usageLine(WORKER_FLAGS, WORKER_HELP);

if (import.meta.main) {
  await runMain("worker", async () => {
    const { values, positionals } = parseFlags(Deno.args, WORKER_FLAGS, WORKER_HELP);
    const backend = values.backend === undefined ? undefined : parseBackend(values.backend);
    if (!values.redis || positionals.length > 0) throw new UserError(`usage: ${USAGE}`);
    const log = (s: string) => values.quiet ? undefined : console.log(`esflow worker: ${s}`);
    if (values.cache === "") throw new UserError(`--cache needs a directory; ${USAGE}`);
    const cache = values.cache ?? defaultWorkerCache();
    try {
      await Deno.mkdir(`${cache}/blobs`, { recursive: true });
    } catch (e) {
      throw new UserError(
        `--cache ${cache}: cannot create the worker's cache there (${
          (e as Error).message.split("\n")[0]
        }); give a writable directory`,
      );
    }
    const gpu = await acquireDevice({ backend });
    log(`backend ${gpu.backend} on ${gpu.name}`);
    const s = await runWorker(gpu, {
      url: values.redis,
      run: values.run,
      log,
      cache: values.cache,
    });
    // Always printed: tests and operators read who did what from this line.
    console.log(
      `esflow worker: run ${s.run} ${s.status}: ${s.consumer} evaluated ${s.members} members in ` +
        `${s.ranges} ranges, applied ${s.updates} updates, θ at iteration ${s.iteration}; ` +
        `bootstrap fetched ${s.bootstrap.fetched} chunks from Redis (${s.bootstrap.bytes} bytes of blobs)`,
    );
    gpu.destroy();
  });
}
