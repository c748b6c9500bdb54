/**
 * The status server: a hono app over a {@link RunSource}, and a helper that serves it.
 *
 *   GET  /                 the dashboard (server/dashboard/index.html) or a placeholder page
 *   GET  /assets/NAME      a vendored file from the allow-list (server/dashboard/assets.ts)
 *   GET  /api/status       where the run stands (JSON)
 *   GET  /api/metrics      the metrics history; ?since=N gives the lines with iter > N
 *   GET  /api/config       the resolved pipeline
 *   GET  /api/events       server-sent events: iteration, checkpoint, end
 *   GET  /metrics          Prometheus text format
 *   POST /api/stop         Authorization: Bearer TOKEN: stop after this iteration, checkpointed
 *
 * Anything other than GET (or HEAD) needs the token: without it the answer is 401 whatever the
 * path, so an exposed server says nothing to a stranger but "authenticate". A read-only server
 * (a run dir) answers 405 to every other method. Errors are JSON `{"error": "..."}`.
 *
 * Every answer carries Content-Security-Policy (only this server; frame-ancestors 'none') and
 * X-Frame-Options: DENY as headers, so no other page can frame the dashboard. A served app
 * checks the Host header against the address it is bound to (421 otherwise): a page on another
 * origin whose name rebinds to 127.0.0.1 (DNS rebinding) sends its own name, so it cannot read
 * /api/config, which holds absolute paths.
 *
 * @module
 */
import { Hono } from "hono";
import type { Context } from "hono";
import { UserError } from "../errors.ts";
import { type AssetMap, DASHBOARD_ASSETS, DASHBOARD_HTML, placeholderPage } from "./assets.ts";
import { PROMETHEUS_CONTENT_TYPE, prometheusText } from "./prometheus.ts";
import { eventStream } from "./sse.ts";
import { type RunSource, statusBody } from "./status.ts";

export type { RunEvent, RunSnapshot, RunSource, RunStateName, StatusBody } from "./status.ts";
export { LiveRun, withStatusHooks } from "./live.ts";
export { RunDirSource } from "./run_dir.ts";

/** Options of {@link createStatusApp}. */
export interface StatusAppOptions {
  /** The run it shows: a {@link RunDirSource}, or a live run. */
  source: RunSource;
  /** The bearer token for POST /api/stop; required unless read-only. */
  token?: string;
  /** Serve a run's files: no stop, every non-GET method is 405. */
  readOnly: boolean;
  /**
   * Files GET /assets/NAME may serve. Default {@link DASHBOARD_ASSETS}.
   * @internal
   */
  assets?: AssetMap;
  /** The dashboard page. Default server/dashboard/index.html. */
  dashboardPage?: string | URL;
  /** Milliseconds between SSE heartbeats. Default 15000. */
  heartbeatMs?: number;
  /** Events an SSE client may have queued before it is dropped. Default 256. */
  maxQueued?: number;
  /** Aborting it ends every open event stream (a server cannot shut down under open streams). */
  signal?: AbortSignal;
  /**
   * Whether a request's Host header names this server; others get 421. Default: every Host
   * ({@link startStatusServer} sets it from the address it binds).
   */
  hostAllowed?: (host: string) => boolean;
}

/**
 * The dashboard's policy, as a header: scripts, styles and requests from this server only, no
 * eval, and no framing by anyone (frame-ancestors is ignored in a <meta> tag, hence the header).
 * vega-embed injects its own <style>, hence 'unsafe-inline' for styles only.
 */
export const CONTENT_SECURITY_POLICY = "default-src 'none'; script-src 'self'; " +
  "style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; " +
  "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/** The safe methods: they read and never need the token. */
const SAFE = new Set(["GET", "HEAD"]);

/** The routes, for telling a wrong method (405) from an unknown path (404). */
const ROUTES: Record<string, string> = {
  "/": "GET",
  "/api/status": "GET",
  "/api/metrics": "GET",
  "/api/config": "GET",
  "/api/events": "GET",
  "/metrics": "GET",
  "/api/stop": "POST",
};

/** Compares two strings in time independent of where they differ. */
function sameToken(given: string, want: string): boolean {
  const a = new TextEncoder().encode(given), b = new TextEncoder().encode(want);
  let diff = a.length ^ b.length;
  for (let i = 0; i < b.length; i++) diff |= (a[i] ?? 0) ^ b[i];
  return diff === 0;
}

function bearer(c: Context): string | null {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(c.req.header("authorization") ?? "");
  return m ? m[1] : null;
}

/** A hono app serving `source`. */
export function createStatusApp(options: StatusAppOptions): Hono {
  const { source, readOnly } = options;
  if (!readOnly && !options.token) throw new Error("createStatusApp: a live server needs a token");
  const assets = new Map(Object.entries(options.assets ?? DASHBOARD_ASSETS));
  const page = options.dashboardPage ?? DASHBOARD_HTML;
  let sseClients = 0;
  const app = new Hono();
  const error = (
    c: Context,
    status: 400 | 401 | 403 | 404 | 405 | 409 | 421 | 500,
    message: string,
  ) => c.json({ error: message }, status);

  app.onError((e, c) => error(c, 500, e.message));
  app.notFound((c) => error(c, 404, `no such path: ${c.req.path}`));

  // The method policy, before any route: the token guards everything that is not a read.
  app.use("*", async (c, next) => {
    c.header("X-Content-Type-Options", "nosniff");
    c.header("Content-Security-Policy", CONTENT_SECURITY_POLICY);
    c.header("X-Frame-Options", "DENY");
    c.header("Referrer-Policy", "no-referrer");
    const host = c.req.header("host");
    if (host !== undefined && options.hostAllowed && !options.hostAllowed(host)) {
      return error(
        c,
        421,
        `Host ${JSON.stringify(host)} does not name this server; open it by its address`,
      );
    }
    const method = c.req.method;
    const allowed = ROUTES[c.req.path];
    if (SAFE.has(method)) {
      if (allowed !== "POST") return await next();
      c.header("Allow", "POST");
      return error(c, 405, `${c.req.path} takes POST with "Authorization: Bearer TOKEN"`);
    }
    if (readOnly) {
      c.header("Allow", "GET, HEAD");
      return error(
        c,
        405,
        c.req.path === "/api/stop"
          ? "read-only: this server shows a run's files and cannot stop it; stop the run where it trains"
          : `read-only: ${method} is not allowed; this server answers GET only`,
      );
    }
    const token = bearer(c);
    if (token === null || !sameToken(token, options.token!)) {
      c.header("WWW-Authenticate", 'Bearer realm="esflow"');
      return error(
        c,
        401,
        token === null
          ? `${method} needs "Authorization: Bearer TOKEN" (the token train printed at start)`
          : "wrong token",
      );
    }
    if (allowed === undefined) return error(c, 404, `no such path: ${c.req.path}`);
    if (allowed !== method) {
      c.header("Allow", allowed === "GET" ? "GET, HEAD" : allowed);
      return error(c, 405, `${method} ${c.req.path} is not allowed; use ${allowed}`);
    }
    return await next();
  });

  app.get("/api/status", async (c) => {
    return c.json(statusBody(await source.snapshot(), { readOnly, sseClients }));
  });

  app.get("/api/metrics", async (c) => {
    const raw = c.req.queries("since");
    let since = -Infinity;
    if (raw !== undefined) {
      if (raw.length !== 1 || !/^-?\d{1,15}$/.test(raw[0])) {
        return error(
          c,
          400,
          `since must be one integer iteration, got ${JSON.stringify(raw.join(","))}`,
        );
      }
      since = Number(raw[0]);
    }
    const lines = await source.metrics();
    return c.json(since === -Infinity ? lines : lines.filter((l) => l.iter > since));
  });

  app.get("/api/config", async (c) => {
    const s = await source.snapshot();
    if (s.pipeline === null) {
      return error(c, 404, "no pipeline recorded yet: the run dir has no state.json");
    }
    return c.json(s.pipeline);
  });

  app.get("/api/events", (c) => {
    const headers = {
      "Content-Type": "text/event-stream; charset=utf-8",
      "Cache-Control": "no-cache",
      // Proxies that buffer (nginx) would hold events back.
      "X-Accel-Buffering": "no",
    };
    // hono answers HEAD through the GET route and drops the body: open no stream for it.
    if (c.req.method === "HEAD") return new Response(null, { headers });
    // A reconnecting EventSource says where it left off; ?since=N does the same for fetch().
    const resume = c.req.header("last-event-id") ?? c.req.query("since");
    if (resume !== undefined && !/^-?\d{1,15}$/.test(resume)) {
      return error(c, 400, `since must be an integer iteration, got ${JSON.stringify(resume)}`);
    }
    sseClients++;
    // A client that leaves cancels the body stream (Deno does on the failed write), which
    // unsubscribes it; request.signal is no use here, Deno aborts it once a response starts.
    const body = eventStream(source, {
      since: resume === undefined ? undefined : Number(resume),
      heartbeatMs: options.heartbeatMs,
      maxQueued: options.maxQueued,
      signal: options.signal,
      onClose: () => sseClients--,
    });
    return new Response(body, { headers });
  });

  app.get("/metrics", async (c) => {
    const text = prometheusText(statusBody(await source.snapshot(), { readOnly, sseClients }));
    return c.body(text, 200, { "Content-Type": PROMETHEUS_CONTENT_TYPE });
  });

  app.post("/api/stop", (c) => {
    // The middleware has checked the token; a read-only server never gets here.
    if (!source.requestStop?.()) return error(c, 409, "the run is not running");
    return c.json({ stopping: true, message: "stopping after the current iteration" }, 202);
  });

  app.get("/", async (c) => {
    let html: string;
    try {
      html = await Deno.readTextFile(page);
    } catch {
      html = placeholderPage((await source.snapshot()).run);
    }
    return c.html(await withLastCheckpoint(html, source));
  });

  app.get("/assets/:name", async (c) => {
    // The name is a key of the allow-list, never a path; Map lookups ignore Object.prototype.
    const asset = assets.get(c.req.param("name"));
    if (!asset) return error(c, 404, `no such asset: ${c.req.param("name")}`);
    const bytes = await Deno.readFile(asset.path);
    return c.body(bytes, 200, {
      "Content-Type": asset.contentType,
      "Cache-Control": "public, max-age=3600",
    });
  });

  return app;
}

/** A source that knows its latest checkpoint (a run dir: server/run_dir.ts). */
interface CheckpointSource {
  lastCheckpoint(): Promise<{ dir: string; iteration: number } | null>;
}

/**
 * The dashboard with its "last checkpoint" filled in from the source when the source knows it:
 * a live page learns checkpoints from `checkpoint` events, but a run dir sends none, so a
 * finished run served from disk would say "–". Written as the page's own event label does.
 */
async function withLastCheckpoint(html: string, source: RunSource): Promise<string> {
  if (!("lastCheckpoint" in source)) return html;
  const ck = await (source as RunSource & CheckpointSource).lastCheckpoint();
  if (!ck) return html;
  return html.replace(
    /(<p id="checkpoint">)–(<\/p>)/,
    `$1iteration ${Math.trunc(ck.iteration)}$2`,
  );
}

/** Loopback names: a server bound to one of them answers to all of them. */
const LOOPBACK = new Set(["127.0.0.1", "localhost", "::1", "[::1]"]);

/**
 * Whether a Host header (`name[:port]`) names a server bound to `bound`: the same port, and
 * the bound name, or a loopback name when bound to loopback, or any IP literal, localhost or
 * this machine's hostname when bound to every interface (0.0.0.0, ::). A DNS name that merely
 * resolves here (a rebinding attacker's) is not one of them.
 */
export function hostNamesServer(header: string, bound: { host: string; port: number }): boolean {
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:\[\]]+)(?::(\d+))?$/.exec(header.trim());
  if (!m) return false;
  const name = m[1].toLowerCase().replace(/\.$/, "");
  const port = m[2] === undefined ? 80 : Number(m[2]);
  if (port !== bound.port) return false;
  const host = bound.host.toLowerCase();
  const literal = (h: string) => h.replace(/^\[|\]$/g, "");
  if (literal(name) === literal(host)) return true;
  if (LOOPBACK.has(host) || host.startsWith("127.")) return LOOPBACK.has(name);
  if (host === "0.0.0.0" || host === "::" || host === "[::]") {
    if (LOOPBACK.has(name) || /^\d{1,3}(\.\d{1,3}){3}$/.test(name) || name.startsWith("[")) {
      return true;
    }
    try {
      return name === Deno.hostname().toLowerCase();
    } catch {
      return false;
    }
  }
  return false;
}

/** A random bearer token: 128 bits, hex. */
export function generateToken(): string {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** Options of {@link startStatusServer}. */
export interface StatusServerOptions extends Omit<StatusAppOptions, "signal"> {
  /** Interface to bind. Default 127.0.0.1 (this machine only). */
  host?: string;
  /** Port; 0 picks a free one. */
  port: number;
  /** The flag that sets the port, for the message when it is taken. Default "--port". */
  portFlag?: string;
  /**
   * Where the port was set, when it came from a file ("file:line:col: output.status.port"):
   * the message of a taken port starts with it.
   */
  portWhere?: string;
  /** The fix a taken port's message ends with. Default: pick another with `portFlag`. */
  portFix?: string;
}

/** A started status server. */
export interface StatusServer {
  /** http://HOST:PORT/ */
  url: string;
  /** The port it listens on (the one picked, when asked for 0). */
  port: number;
  /** Ends the event streams and stops listening. */
  close(): Promise<void>;
}

/** Serves {@link createStatusApp} with Deno.serve; a taken port is a one-line UserError. */
export function startStatusServer(options: StatusServerOptions): StatusServer {
  const host = options.host ?? "127.0.0.1";
  const streams = new AbortController();
  let port = options.port;
  const app = createStatusApp({
    ...options,
    signal: streams.signal,
    hostAllowed: (h) => hostNamesServer(h, { host, port }),
  });
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({ hostname: host, port: options.port, onListen: () => {} }, app.fetch);
  } catch (e) {
    const flag = options.portFlag ?? "--port";
    const at = options.portWhere ? `${options.portWhere}: ` : "";
    if (e instanceof Deno.errors.AddrInUse) {
      throw new UserError(
        `${at}status server: port ${options.port} on ${host} is in use; ${
          options.portFix ?? `pick another with ${flag} N (0 = any free port)`
        }`,
      );
    }
    throw new UserError(
      `${at}status server: cannot listen on ${host}:${options.port}: ${
        (e as Error).message.split("\n")[0]
      }`,
    );
  }
  port = server.addr.port;
  const shown = host.includes(":") ? `[${host}]` : host;
  return {
    url: `http://${shown}:${port}/`,
    port,
    close: async () => {
      streams.abort();
      await server.shutdown();
    },
  };
}
