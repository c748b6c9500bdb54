/**
 * `deno run -A tools/record.ts OUT.cast -- COMMAND…`: records a command's terminal output as an
 * asciicast v2 file (https://docs.asciinema.org/manual/asciicast/v2/), the way the README's
 * recording of the default run (docs/first-run.cast) was made. The command runs under a
 * pseudo-terminal from util-linux's `script`, so it draws what a person at a terminal sees
 * (spinners, lines redrawn in place); each chunk of output is stored with the seconds since the
 * start. `asciinema play OUT.cast` replays it; beside it, OUT.txt holds the final screen's lines
 * (each redrawn line as it was last drawn) for reading without a player.
 *
 * @module
 */
import { runMain } from "./cli.ts";
import { UserError } from "../errors.ts";

/** The screen text a stream of terminal output leaves: `\r` redraws, CSI sequences dropped. */
export function finalLines(output: string): string[] {
  const lines: string[] = [];
  // deno-lint-ignore no-control-regex
  for (const raw of output.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "").split("\n")) {
    // What a redrawn line shows is what was written after its last carriage return.
    const parts = raw.split("\r").filter((p) => p.length > 0);
    lines.push(parts.length ? parts[parts.length - 1] : "");
  }
  while (lines.length && lines[lines.length - 1] === "") lines.pop();
  return lines;
}

if (import.meta.main) {
  await runMain("record", async () => {
    const sep = Deno.args.indexOf("--");
    const out = Deno.args[0];
    if (!out?.endsWith(".cast") || sep !== 1 || sep === Deno.args.length - 1) {
      throw new UserError("usage: deno run -A tools/record.ts OUT.cast -- COMMAND [ARGS…]");
    }
    const command = Deno.args.slice(2).map((a) => `'${a.replaceAll("'", `'\\''`)}'`).join(" ");
    const cols = 100, rows = 30;
    const child = new Deno.Command("script", {
      args: ["-qfec", `stty cols ${cols} rows ${rows}; ${command}`, "/dev/null"],
      stdout: "piped",
      stderr: "inherit",
      stdin: "null",
      env: { TERM: "xterm-256color" },
    }).spawn();
    const start = performance.now();
    const events: string[] = [];
    let text = "";
    const decoder = new TextDecoder();
    for await (const chunk of child.stdout) {
      const s = decoder.decode(chunk, { stream: true });
      text += s;
      await Deno.stdout.write(chunk);
      events.push(JSON.stringify([(performance.now() - start) / 1000, "o", s]));
    }
    const status = await child.status;
    const header = {
      version: 2,
      width: cols,
      height: rows,
      timestamp: Math.floor(Date.now() / 1000),
      command: Deno.args.slice(2).join(" "),
      env: { TERM: "xterm-256color" },
    };
    const tmp = `${out}.tmp`;
    await Deno.writeTextFile(tmp, [JSON.stringify(header), ...events].join("\n") + "\n");
    await Deno.rename(tmp, out);
    const txt = out.replace(/\.cast$/, ".txt");
    await Deno.writeTextFile(`${txt}.tmp`, finalLines(text).join("\n") + "\n");
    await Deno.rename(`${txt}.tmp`, txt);
    console.error(`recorded ${events.length} chunks to ${out} and ${txt} (exit ${status.code})`);
    if (!status.success) Deno.exit(status.code);
  });
}
