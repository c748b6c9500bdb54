/**
 * What every esflow command shares: a main wrapper that turns bad input into one line on stderr
 * and exit code 2, with no stack trace, and flag parsing with node:util.
 *
 * @module
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { UserError } from "../pipeline/errors.ts";
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

/**
 * Parses flags strictly; an unknown flag or a missing value is a UserError naming the fix.
 * `--help` / `-h` prints the usage and exits 0 for every command.
 */
export function parseFlags<T extends NonNullable<ParseArgsConfig["options"]>>(
  args: string[],
  options: T,
  usage: string,
) {
  // node:util reads "--seed -3" as a flag missing its value ("argument is ambiguous"): a value
  // that is a negative number belongs to its flag, so the flag's own check can name the fault.
  const joined: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const name = /^--([^=]+)$/.exec(args[i])?.[1];
    if (
      name !== undefined && options[name]?.type === "string" && i + 1 < args.length &&
      /^-(\d|\.\d|Infinity$)/.test(args[i + 1])
    ) {
      joined.push(`--${name}=${args[++i]}`);
    } else {
      joined.push(args[i]);
    }
  }
  let parsed;
  try {
    parsed = parseArgs({
      args: joined,
      options: { ...options, help: { type: "boolean", short: "h" } },
      allowPositionals: true,
      strict: true,
    });
  } catch (e) {
    throw new UserError(`${(e as Error).message.split("\n")[0]}; usage: ${usage}`);
  }
  if ((parsed.values as Record<string, unknown>).help) {
    console.log(`usage: ${usage}`);
    Deno.exit(0);
  }
  return parsed;
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
