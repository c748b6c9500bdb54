/**
 * `deno task serve RUN_DIR`: the status server over a run's files, read-only: the same API and
 * dashboard as a training run's, for a finished, stopped or crashed run.
 *
 *   deno task serve RUN_DIR [--port N] [--host H]
 *
 * Port 8787 by default (0 picks a free one), on 127.0.0.1 unless --host says otherwise. POST
 * /api/stop answers 405: there is nothing here to stop. An unknown run dir or a taken port is
 * one line on stderr and exit code 2.
 *
 * @module
 */
import { type CommandHelp, type DocumentedFlag, parseFlags, runMain, usageLine } from "./cli.ts";
import { UserError } from "../errors.ts";
import { RunDirSource, startStatusServer } from "../server/mod.ts";

/** serve's flags: the parser, the usage line and `--help` all come from this table. */
export const SERVE_FLAGS = {
  port: {
    type: "string",
    value: "N",
    help: "the port to listen on; 0 = any free port",
    default: "8787",
  },
  host: {
    type: "string",
    value: "HOST",
    help: "the interface to listen on; 0.0.0.0 exposes it beyond this machine",
    default: "127.0.0.1",
  },
} satisfies Record<string, DocumentedFlag>;

/** What `deno task serve --help` says besides the flags. */
export const SERVE_HELP: CommandHelp = {
  command: "deno task serve",
  args: "RUN_DIR",
  about: "The status API and dashboard over a run's files, read-only (a finished, stopped or " +
    "crashed run).",
  positionals: [["RUN_DIR", "the --out of a train run (required)"]],
  example: "deno task serve runs/tiny-austen --port 8790",
};

const USAGE = usageLine(SERVE_FLAGS, SERVE_HELP);

if (import.meta.main) {
  await runMain("serve", async () => {
    const { values, positionals } = parseFlags(Deno.args, SERVE_FLAGS, SERVE_HELP);
    if (positionals.length !== 1) throw new UserError(`one run dir; usage: ${USAGE}`);
    const port = values.port === undefined ? 8787 : Number(values.port);
    if (!/^\d+$/.test(values.port ?? "0") || port > 65535) {
      throw new UserError(
        `--port must be an integer 0..65535 (0 = a free port), got "${values.port}"`,
      );
    }
    const source = await RunDirSource.open(positionals[0]);
    const server = startStatusServer({
      source,
      readOnly: true,
      host: values.host,
      port,
      portFlag: "--port",
    });
    const s = await source.snapshot();
    console.log(
      `esflow serve ${s.run}: ${source.dir} (${s.state}, ${s.iteration}/${
        s.total ?? "?"
      } iterations)`,
    );
    console.log(`status ${server.url} (read-only; Ctrl-C to quit)`);
    Deno.addSignalListener("SIGINT", () => {
      server.close().finally(() => Deno.exit(0));
    });
  });
}
