/**
 * What every esflow command shares: a main wrapper that turns bad input into one line on stderr
 * and exit code 2, with no stack trace, and flag parsing with node:util whose `--help` lists
 * every flag with its default and meaning, and an example.
 *
 * A command declares its flags once ({@link Flags}); the usage line, the help and the parser
 * all come from that one table, so the usage line cannot leave a flag out.
 *
 * @module
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { UserError } from "../errors.ts";
import { GpuError } from "../kernels/runtime.ts";

/** Runs `main`; a UserError or GpuError prints `esflow: message` and exits 2. */
export async function runMain(name: string, main: () => Promise<void>): Promise<void> {
  try {
    await main();
  } catch (e) {
    if (e instanceof UserError || e instanceof GpuError) {
      console.error(`esflow ${name}: ${e.message}`);
      Deno.exit(2);
    }
    throw e;
  }
}

/** A flag that takes a value: `--name VALUE`. */
export interface StringFlag {
  type: "string";
  short?: string;
  multiple?: boolean;
  /** The value's placeholder in the usage and help: N, DIR, URL, auto|webgpu|cpu. */
  value?: string;
  /** One line: what the flag does. */
  help?: string;
  /**
   * What applies without the flag, in words ("100", "the pipeline's"); "required" or "give
   * this or --x" for a flag without a default.
   */
  default?: string;
}

/** A switch: `--name`. Off unless given. */
export interface BooleanFlag {
  type: "boolean";
  short?: string;
  /** One line: what the flag does. */
  help?: string;
}

/** A command's flags by name (without the dashes). */
export type Flags = Record<string, StringFlag | BooleanFlag>;

/** A flag as every command of esflow documents it: its meaning, and a string flag's default. */
export type DocumentedFlag =
  | (StringFlag & { value: string; help: string; default: string })
  | (BooleanFlag & { help: string });

/** What `--help` says about a command besides its flags. */
export interface CommandHelp {
  /** How it is run: "deno task train". */
  command: string;
  /** The positional arguments as they appear in the usage line: "[PIPELINE.yaml]". */
  args?: string;
  /**
   * The usage line after the command, when the flags have a structure the generated
   * `[--flag VALUE]…` list would hide (eval's `--tokens | --text`). It must name every flag.
   */
  synopsis?: string;
  /** One or two lines: what the command does. */
  about?: string;
  /** The positional arguments: name, meaning (with its default). */
  positionals?: [name: string, help: string][];
  /** One example command line (or a few). */
  example?: string | string[];
}

/** The one-line usage: the command, its arguments and every flag. */
export function usageLine(flags: Flags, help: CommandHelp | string): string {
  if (typeof help === "string") return help;
  if (help.synopsis !== undefined) return `${help.command} ${help.synopsis}`;
  const parts = [help.command, ...(help.args ? [help.args] : [])];
  for (const [name, f] of Object.entries(flags)) {
    parts.push(f.type === "string" ? `[--${name} ${f.value ?? "VALUE"}]` : `[--${name}]`);
  }
  return parts.join(" ");
}

/** The `--help` text: usage, what it does, the arguments, every flag, an example. */
export function formatHelp(flags: Flags, help: CommandHelp | string): string {
  const out = [`usage: ${usageLine(flags, help)}`];
  const h = typeof help === "string" ? { command: help } as CommandHelp : help;
  if (h.about) out.push("", h.about);
  const rows: [string, string][] = [];
  if (h.positionals?.length) {
    out.push("", "arguments:");
    const width = Math.max(...h.positionals.map(([n]) => n.length)) + 4;
    for (const [name, text] of h.positionals) out.push(`  ${name.padEnd(width)}${text}`);
  }
  for (const [name, f] of Object.entries(flags)) {
    const short = f.short ? `-${f.short}, ` : "";
    const left = `${short}--${name}${f.type === "string" ? ` ${f.value ?? "VALUE"}` : ""}`;
    // "required" and "give this or --x" are said as they are; anything else is the default.
    const fallback = f.type !== "string" || f.default === undefined
      ? ""
      : /^(required|give )/.test(f.default)
      ? ` (${f.default})`
      : ` (default: ${f.default})`;
    rows.push([left, `${f.help ?? ""}${fallback}`.trim()]);
  }
  rows.push(["-h, --help", "print this help and exit"]);
  const width = Math.min(30, Math.max(...rows.map(([l]) => l.length)) + 2);
  out.push("", "flags:");
  for (const [left, text] of rows) {
    out.push(
      left.length + 2 > width
        ? `  ${left}\n  ${" ".repeat(width)}${text}`
        : `  ${left.padEnd(width)}${text}`,
    );
  }
  const examples = h.example === undefined ? [] : [h.example].flat();
  if (examples.length > 0) {
    out.push("", examples.length === 1 ? "example:" : "examples:");
    for (const e of examples) out.push(`  ${e}`);
  }
  return out.join("\n");
}

/** The node:util options of a flag table: its own keys only. */
function nodeOptions(flags: Flags): NonNullable<ParseArgsConfig["options"]> {
  return Object.fromEntries(
    Object.entries(flags).map(([name, f]) => [
      name,
      {
        type: f.type,
        ...(f.short ? { short: f.short } : {}),
        ...(f.type === "string" && f.multiple ? { multiple: true } : {}),
      },
    ]),
  );
}

/**
 * Parses flags strictly; an unknown flag or a missing value is a UserError naming the fix.
 * `--help` / `-h` prints {@link formatHelp} and exits 0 for every command.
 */
export function parseFlags<T extends Flags>(
  args: string[],
  flags: T,
  help: CommandHelp | string,
) {
  const usage = usageLine(flags, help);
  // node:util reads "--seed -3" as a flag missing its value ("argument is ambiguous"): a value
  // that is a negative number belongs to its flag, so the flag's own check can name the fault.
  const joined: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const name = /^--([^=]+)$/.exec(args[i])?.[1];
    if (
      name !== undefined && flags[name]?.type === "string" && i + 1 < args.length &&
      /^-(\d|\.\d|Infinity$)/.test(args[i + 1])
    ) {
      joined.push(`--${name}=${args[++i]}`);
    } else {
      joined.push(args[i]);
    }
  }
  if (joined.includes("--help") || joined.includes("-h")) {
    console.log(formatHelp(flags, help));
    Deno.exit(0);
  }
  try {
    return parseArgs({
      args: joined,
      options: nodeOptions(flags) as { [K in keyof T]: { type: T[K]["type"] } },
      allowPositionals: true,
      strict: true,
    });
  } catch (e) {
    throw new UserError(`${(e as Error).message.split("\n")[0]}; usage: ${usage}`);
  }
}

/** Parses a positive integer flag, or throws a UserError naming it. */
export function intFlag(value: string | undefined, flag: string, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) {
    throw new UserError(`--${flag} must be a positive integer, got "${value}"`);
  }
  return n;
}
