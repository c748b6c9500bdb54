/**
 * The dashboard's files, for the status server to serve: the page at GET / and each asset at
 * GET /assets/NAME. Nothing is fetched from a CDN: training machines may be offline, and the
 * page makes no request outside the server it came from.
 *
 * The chart library (vega, vega-lite, vega-embed; BSD-3-Clause; their LICENSE files are assets too, linked from the page) is
 * served straight from node_modules: any `deno run`/`deno test` in this project installs every
 * deno.json import there first ("nodeModulesDir": "auto"), so the files exist wherever the
 * server can start, and their versions are pinned by deno.json and deno.lock.
 *
 * @module
 */
import { fileURLToPath } from "node:url";

/** A file the server sends as is. */
export interface DashboardAsset {
  /** Absolute path on disk. */
  path: string;
  /** Content-Type header value. */
  contentType: string;
}

const here = (rel: string) => fileURLToPath(new URL(rel, import.meta.url));
const JS = "text/javascript; charset=utf-8";
const TEXT = "text/plain; charset=utf-8";

/** The dashboard page (GET /). */
export const DASHBOARD_HTML: string = here("./index.html");

/**
 * The assets the page loads, by the NAME in /assets/NAME. The page names them in this order:
 * vega first, then vega-lite (which needs the global `vega`), then vega-embed (which needs both).
 */
export const DASHBOARD_ASSETS: Readonly<Record<string, DashboardAsset>> = Object.freeze({
  "vega.min.js": { path: here("../../node_modules/vega/build/vega.min.js"), contentType: JS },
  "vega-lite.min.js": {
    path: here("../../node_modules/vega-lite/build/vega-lite.min.js"),
    contentType: JS,
  },
  "vega-embed.min.js": {
    path: here("../../node_modules/vega-embed/build/vega-embed.min.js"),
    contentType: JS,
  },
  "dashboard.js": { path: here("./dashboard.js"), contentType: JS },
  "dashboard.css": { path: here("./dashboard.css"), contentType: "text/css; charset=utf-8" },
  "favicon.svg": { path: here("./favicon.svg"), contentType: "image/svg+xml" },
  // BSD-3-Clause asks that the notices travel with the code: the page's footer links them.
  "vega-LICENSE.txt": { path: here("../../node_modules/vega/LICENSE"), contentType: TEXT },
  "vega-lite-LICENSE.txt": {
    path: here("../../node_modules/vega-lite/LICENSE"),
    contentType: TEXT,
  },
  "vega-embed-LICENSE.txt": {
    path: here("../../node_modules/vega-embed/LICENSE"),
    contentType: TEXT,
  },
});

/**
 * Checks every dashboard file exists; throws naming the fix otherwise. A server calls this at
 * start so a missing node_modules is one clear line, not a 404 in someone's browser later.
 */
export async function checkDashboardAssets(): Promise<void> {
  for (const path of [DASHBOARD_HTML, ...Object.values(DASHBOARD_ASSETS).map((a) => a.path)]) {
    try {
      await Deno.stat(path);
    } catch {
      throw new Error(
        `dashboard file ${path} is missing; run \`deno install\` in the project root`,
      );
    }
  }
}
