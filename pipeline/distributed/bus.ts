/**
 * The Redis connection of a distributed run: URL parsing (password, ACL user, database, unix
 * socket), one client per process, commands retried through a short outage, and the reply shapes
 * of the stream commands turned into plain entries.
 *
 * Every command goes through {@link RedisBus.call} as a raw argument list, so the protocol in
 * pipeline/distributed.ts reads as the Redis commands it sends.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { createClient, ErrorReply, RESP_TYPES } from "redis";
import { UserError } from "../../errors.ts";
import { RunInterrupted } from "../run.ts";

/** Where to connect, parsed from a URL. */
export interface RedisTarget {
  /** The URL with the password replaced by `***`, for messages. */
  display: string;
  /** A TCP host and port, or a unix socket path. */
  socket: { host: string; port: number } | { path: string };
  username?: string;
  password?: string;
  database?: number;
}

/**
 * Parses `redis://[[user]:password@]host[:port][/db]` or
 * `unix://[[user]:password@]/path/to/redis.sock[?db=N]`. A malformed URL is a UserError naming
 * the accepted forms.
 */
export function parseRedisUrl(url: string): RedisTarget {
  const forms =
    "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] or unix://[[USER]:PASSWORD@]/PATH.sock[?db=N]";
  const unix = /^unix:\/\/(?:([^:@/]*)(?::([^@]*))?@)?(\/[^?]+)(?:\?db=(\d+))?$/.exec(url);
  if (unix) {
    const [, user, pass, path, db] = unix;
    return {
      display: `unix://${
        pass !== undefined ? `${user ?? ""}:***@` : user ? `${user}@` : ""
      }${path}`,
      socket: { path },
      username: user || undefined,
      password: pass !== undefined ? decodeURIComponent(pass) : undefined,
      database: db === undefined ? undefined : Number(db),
    };
  }
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new UserError(`--redis "${url}" is not a URL; use ${forms}`);
  }
  if (u.protocol !== "redis:" || !u.hostname) {
    throw new UserError(`--redis "${url}": use ${forms}`);
  }
  const db = u.pathname.replace(/^\//, "");
  if (db !== "" && !/^\d+$/.test(db)) {
    throw new UserError(`--redis "${url}": the path is the database number, got "/${db}"`);
  }
  const shown = new URL(url);
  if (shown.password) shown.password = "***";
  return {
    display: shown.toString(),
    socket: { host: u.hostname.replace(/^\[|\]$/g, ""), port: u.port ? Number(u.port) : 6379 },
    username: u.username ? decodeURIComponent(u.username) : undefined,
    password: u.password ? decodeURIComponent(u.password) : undefined,
    database: db === "" ? undefined : Number(db),
  };
}

/**
 * Redis is unreachable and stayed so through the grace period. Thrown from an evaluator it makes
 * the run write a checkpoint first ({@link RunInterrupted}).
 */
export class RedisGone extends RunInterrupted {
  override name = "RedisGone";
}

/** One stream entry: its id and its fields. */
export interface StreamEntry {
  id: string;
  fields: Record<string, string>;
}

/** The two client methods the bus uses (node-redis's generic client type is not needed). */
interface RedisClient {
  sendCommand(args: (string | Buffer)[], options?: { typeMapping?: object }): Promise<unknown>;
  destroy(): void;
}

/** True for errors of the connection (as opposed to an error reply from the server). */
function isConnectionError(e: unknown): boolean {
  return !(e instanceof ErrorReply) && !(e instanceof UserError);
}

/**
 * How long a connect (with its PING) or a command may wait for Redis to answer, beyond the
 * time a blocking command asks for: a server that accepts TCP and never replies must not hang
 * a process. ESFLOW_REDIS_TIMEOUT_MS, default 10 s.
 */
export function replyTimeoutMs(): number {
  const v = Number(Deno.env.get("ESFLOW_REDIS_TIMEOUT_MS") ?? "10000");
  return Number.isFinite(v) && v > 0 ? v : 10000;
}

/** A connect or a command that got no answer in time. */
class NoReply extends Error {
  override name = "NoReply";
}

/** `p`, or a {@link NoReply} after `ms`; the timer never outlives the race. */
async function withinMs<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new NoReply(`no reply to ${what} within ${(ms / 1000).toFixed(1)} s`)),
          ms,
        );
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** The milliseconds a command's own BLOCK argument asks to wait (0 when it has none). */
function blockMs(argv: readonly string[]): number {
  const i = argv.findIndex((a) => a.toUpperCase() === "BLOCK");
  const v = i >= 0 ? Number(argv[i + 1]) : 0;
  return Number.isFinite(v) && v > 0 ? v : 0;
}

/** How long a process keeps retrying a lost connection before it gives up. */
export function graceMs(): number {
  const v = Number(Deno.env.get("ESFLOW_REDIS_GRACE_MS") ?? "5000");
  return Number.isFinite(v) && v >= 0 ? v : 5000;
}

/** A Redis client for one process of a distributed run. */
export class RedisBus {
  readonly target: RedisTarget;
  #client: RedisClient;
  #grace: number;
  #timeout: number;
  #lostSince: number | null = null;
  #closed = false;
  /** Set once a command gave up on the connection: later commands would only wait again. */
  gone = false;

  private constructor(
    target: RedisTarget,
    client: RedisClient,
    o: { grace: number; timeout: number },
  ) {
    this.target = target;
    this.#client = client;
    this.#grace = o.grace;
    this.#timeout = o.timeout;
  }

  /**
   * Connects and checks the credentials with a PING. A refused connection, a wrong or missing
   * password, or a server that does not answer within {@link replyTimeoutMs} is a one-line
   * UserError that names the URL (password hidden) and the fix.
   */
  static async connect(
    url: string,
    o: { name: string; graceMs?: number; timeoutMs?: number },
  ): Promise<RedisBus> {
    const target = parseRedisUrl(url);
    const grace = o.graceMs ?? graceMs();
    const timeout = o.timeoutMs ?? replyTimeoutMs();
    let lostAt = 0, connected = false;
    const client = createClient({
      socket: {
        ...target.socket,
        connectTimeout: Math.min(5000, timeout),
        // Retry every 100 ms through a short outage; past the grace period the client closes
        // and every command fails at once (the caller turns that into RedisGone).
        reconnectStrategy: (retries: number, cause: Error) => {
          // At start, and for a refused password, a retry cannot help: fail at once.
          if (!connected || cause instanceof ErrorReply) return cause;
          if (retries === 0) lostAt = performance.now();
          return performance.now() - lostAt > grace ? cause : 100;
        },
      },
      username: target.username,
      password: target.password,
      database: target.database,
      name: o.name.replace(/\s/g, "_"),
      // Commands fail fast while the socket is down instead of queueing behind a dead server;
      // call() retries them itself within the grace period.
      disableOfflineQueue: true,
    });
    // node-redis emits every socket error here; without a listener it would be thrown.
    client.on("error", () => {});
    try {
      // The handshake (CLIENT SETNAME, SELECT, AUTH) and the PING both wait for replies.
      await withinMs(
        (async () => {
          await client.connect();
          await client.sendCommand(["PING"]);
        })(),
        timeout,
        "the connection handshake and PING",
      );
      connected = true;
    } catch (e) {
      try {
        client.destroy();
      } catch { /* never connected */ }
      throw connectError(target, e);
    }
    return new RedisBus(target, client, { grace, timeout });
  }

  /**
   * Sends one command. Connection errors are retried every 100 ms until the grace period has
   * passed since the connection was lost, then become {@link RedisGone}; error replies from the
   * server are thrown as they are.
   */
  async call(args: (string | number | Uint8Array)[]): Promise<unknown> {
    return await this.#send(args, false);
  }

  /**
   * Like {@link call}, for a command whose reply is one binary string (GET of a blob chunk):
   * the bytes as they are, not decoded as UTF-8; null for a missing key.
   */
  async callBytes(args: (string | number)[]): Promise<Uint8Array | null> {
    const reply = await this.#send(args, true);
    return reply === null || reply === undefined ? null : new Uint8Array(reply as Buffer);
  }

  async #send(args: (string | number | Uint8Array)[], bytes: boolean): Promise<unknown> {
    const argv = args.map((a) =>
      a instanceof Uint8Array ? Buffer.from(a.buffer, a.byteOffset, a.byteLength) : String(a)
    );
    const names = argv.map((a) => typeof a === "string" ? a : "");
    const options = bytes ? { typeMapping: { [RESP_TYPES.BLOB_STRING]: Buffer } } : undefined;
    for (;;) {
      if (this.#closed) throw new RedisGone(`redis at ${this.target.display}: connection closed`);
      try {
        const reply = await withinMs(
          this.#client.sendCommand(argv, options),
          this.#timeout + blockMs(names),
          names[0],
        );
        this.#lostSince = null;
        return reply;
      } catch (e) {
        if (e instanceof NoReply) {
          // Connected, but the server has stopped answering: retrying would wait as long again.
          this.gone = true;
          this.close();
          throw new RedisGone(
            `redis at ${this.target.display}: ${e.message}; the server accepts connections but ` +
              `does not answer: check that it is a working redis-server and fix --redis`,
          );
        }
        if (!isConnectionError(e)) throw e;
        this.#lostSince ??= performance.now();
        if (this.gone || performance.now() - this.#lostSince > this.#grace) {
          this.gone = true;
          throw new RedisGone(
            `redis at ${this.target.display} went away (${
              firstLine(e)
            }) and did not come back within ${(this.#grace / 1000).toFixed(1)} s`,
          );
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  /** XADD key * field value …; returns the new entry's id. */
  async add(key: string, fields: Record<string, string | number>): Promise<string> {
    const flat = Object.entries(fields).flatMap(([k, v]) => [k, String(v)]);
    return String(await this.call(["XADD", key, "*", ...flat]));
  }

  /** The entries of one stream in an XREAD / XREADGROUP reply (RESP2 array or RESP3 map). */
  static streamEntries(reply: unknown, key: string): StreamEntry[] {
    if (reply === null || reply === undefined) return [];
    let raw: unknown;
    if (Array.isArray(reply)) raw = (reply as [string, unknown][]).find(([k]) => k === key)?.[1];
    else if (reply instanceof Map) raw = reply.get(key);
    else raw = (reply as Record<string, unknown>)[key];
    return RedisBus.entries(raw);
  }

  /** Entries of an XRANGE reply, or of the entry list inside another stream reply. */
  static entries(raw: unknown): StreamEntry[] {
    if (!Array.isArray(raw)) return [];
    const out: StreamEntry[] = [];
    for (const e of raw as [string, string[] | null][]) {
      // XAUTOCLAIM on an older server lists deleted entries with nil fields: nothing to serve.
      if (!Array.isArray(e) || !Array.isArray(e[1])) continue;
      const fields: Record<string, string> = {};
      for (let i = 0; i + 1 < e[1].length; i += 2) fields[String(e[1][i])] = String(e[1][i + 1]);
      out.push({ id: String(e[0]), fields });
    }
    return out;
  }

  /** HGETALL as a plain object (RESP2 flat array or RESP3 map). */
  async hash(key: string): Promise<Record<string, string>> {
    const reply = await this.call(["HGETALL", key]);
    if (Array.isArray(reply)) {
      const out: Record<string, string> = {};
      for (let i = 0; i + 1 < reply.length; i += 2) out[String(reply[i])] = String(reply[i + 1]);
      return out;
    }
    if (reply instanceof Map) {
      return Object.fromEntries([...reply].map(([k, v]) => [String(k), String(v)]));
    }
    return Object.fromEntries(
      Object.entries((reply ?? {}) as Record<string, unknown>).map(([k, v]) => [k, String(v)]),
    );
  }

  /** Bytes Redis has received from and sent to all clients since it started (INFO stats). */
  async netBytes(): Promise<{ input: number; output: number }> {
    const info = String(await this.call(["INFO", "stats"]));
    const num = (k: string) => Number(new RegExp(`${k}:(\\d+)`).exec(info)?.[1] ?? NaN);
    return { input: num("total_net_input_bytes"), output: num("total_net_output_bytes") };
  }

  /** Closes the connection (idempotent; never throws). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#client.destroy();
    } catch { /* already gone */ }
  }
}

function firstLine(e: unknown): string {
  return String((e as Error)?.message ?? e).split("\n")[0];
}

/** A connect failure as one line with the fix. */
function connectError(target: RedisTarget, e: unknown): UserError {
  const why = firstLine(e);
  if (/NOAUTH|WRONGPASS|invalid password|invalid username-password/i.test(why)) {
    const short = /NOAUTH/.test(why)
      ? "NOAUTH: the server requires a password"
      : "WRONGPASS: wrong user or password";
    return new UserError(
      `redis at ${target.display}: authentication failed (${short}); put the password in the URL, ` +
        `redis://:PASSWORD@HOST:PORT or redis://USER:PASSWORD@HOST:PORT`,
    );
  }
  if (e instanceof NoReply) {
    return new UserError(
      `redis at ${target.display}: ${why}; something accepts connections there but does not ` +
        `answer as Redis: check that a redis-server listens there, or fix --redis`,
    );
  }
  return new UserError(
    `redis at ${target.display}: cannot connect (${why}); start redis-server there or fix --redis`,
  );
}
