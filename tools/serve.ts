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
import { parseFlags, runMain } from "./cli.ts";
import { UserError } from "../pipeline/errors.ts";
import { RunDirSource, startStatusServer } from "../server/mod.ts";

const USAGE = "deno task serve RUN_DIR [--port N] [--host H]";

if (import.meta.main) {
  await runMain("serve", async () => {
    const { values, positionals } = parseFlags(Deno.args, {
      port: { type: "string" },
      host: { type: "string" },
    }, USAGE);
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
