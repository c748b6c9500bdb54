// A real redis-server for tests: started in a temp dir on a unix socket (no port to race for)
// or on a free TCP port, with no persistence, and stopped by its PID. Every wait is bounded.
import { tempDir } from "./helpers.ts";

/** A running redis-server started by {@link startRedis}. */
export interface TestRedis {
  /** The URL clients connect with (password included when one was set). */
  url: string;
  /** Same, without the password. */
  urlNoPassword: string;
  pid: number;
  dir: string;
  /** Stops it (SIGTERM, then SIGKILL after 3 s); idempotent. */
  stop(): Promise<void>;
}

/** A TCP port nothing listens on right now. */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Resolves when `fn` returns true, polling every 50 ms; throws after `ms`. */
export async function waitFor(
  fn: () => boolean | Promise<boolean>,
  o: { ms: number; what: string },
): Promise<void> {
  const end = performance.now() + o.ms;
  while (!(await fn())) {
    if (performance.now() > end) {
      throw new Error(`timed out after ${o.ms} ms waiting for ${o.what}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Starts /usr/bin/redis-server (or the one on PATH) in a fresh temp dir. `tcp` listens on a free
 * 127.0.0.1 port instead of a unix socket; `password` sets requirepass.
 */
export async function startRedis(o: { tcp?: boolean; password?: string } = {}): Promise<TestRedis> {
  const dir = await tempDir("esflow_redis_");
  const sock = `${dir}/redis.sock`;
  const port = o.tcp ? freePort() : 0;
  const args = [
    "--port",
    String(port),
    "--bind",
    "127.0.0.1",
    "--dir",
    dir,
    "--save",
    "",
    "--appendonly",
    "no",
    "--daemonize",
    "no",
    "--logfile",
    `${dir}/redis.log`,
    ...(o.tcp ? [] : ["--unixsocket", sock, "--unixsocketperm", "700"]),
    ...(o.password ? ["--requirepass", o.password] : []),
  ];
  const child = new Deno.Command("redis-server", {
    args,
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const stop = async () => {
    if (exited) return;
    try {
      Deno.kill(child.pid, "SIGTERM");
    } catch { /* already gone */ }
    const timer = setTimeout(() => {
      try {
        Deno.kill(child.pid, "SIGKILL");
      } catch { /* already gone */ }
    }, 3000);
    await status;
    clearTimeout(timer);
  };
  const auth = o.password ? `:${encodeURIComponent(o.password)}@` : "";
  const urlNoPassword = o.tcp ? `redis://127.0.0.1:${port}` : `unix://${sock}`;
  const url = o.tcp ? `redis://${auth}127.0.0.1:${port}` : `unix://${auth}${sock}`;
  try {
    await waitFor(async () => {
      if (exited) throw new Error(`redis-server exited at start: ${await log(dir)}`);
      try {
        const conn = o.tcp
          ? await Deno.connect({ hostname: "127.0.0.1", port })
          : await Deno.connect({ transport: "unix", path: sock });
        conn.close();
        return true;
      } catch {
        return false;
      }
    }, { ms: 10_000, what: "redis-server to listen" });
  } catch (e) {
    await stop();
    throw e;
  }
  return { url, urlNoPassword, pid: child.pid, dir, stop };
}

async function log(dir: string): Promise<string> {
  try {
    return (await Deno.readTextFile(`${dir}/redis.log`)).slice(-500);
  } catch {
    return "(no log)";
  }
}
