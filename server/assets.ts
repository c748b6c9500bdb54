/**
 * The files GET / and GET /assets/NAME may serve: the dashboard page and an allow-list of
 * vendored static files (the chart library and the page's own scripts). The machine may be
 * offline, so the page loads nothing from a CDN.
 *
 * A request names an entry of the allow-list, never a path: only files listed there can be read.
 *
 * @module
 */

/** One servable file. */
export interface StaticAsset {
  /** The file: a URL (e.g. `new URL("./dashboard/app.js", import.meta.url)`) or an absolute path. */
  path: string | URL;
  /** Its Content-Type, e.g. "text/javascript; charset=utf-8". */
  contentType: string;
}

/** The allow-list: GET /assets/NAME serves DASHBOARD_ASSETS[NAME]. */
export type AssetMap = Readonly<Record<string, StaticAsset>>;

/** The dashboard's page and vendored files (server/dashboard/assets.ts keeps the list). */
export { DASHBOARD_ASSETS, DASHBOARD_HTML } from "./dashboard/assets.ts";

/** A minimal page naming the run and the API, for when there is no dashboard page. */
export function placeholderPage(run: string): string {
  const esc = run.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>esflow: ${esc}</title></head>
<body>
<h1>esflow: ${esc}</h1>
<p>The dashboard page is not installed. The run's data:</p>
<ul>
<li><a href="/api/status">/api/status</a>: where the run stands</li>
<li><a href="/api/metrics">/api/metrics</a>: every metrics line (<code>?since=N</code>)</li>
<li><a href="/api/config">/api/config</a>: the resolved pipeline</li>
<li><a href="/api/events">/api/events</a>: server-sent events</li>
<li><a href="/metrics">/metrics</a>: Prometheus</li>
</ul>
</body></html>
`;
}
