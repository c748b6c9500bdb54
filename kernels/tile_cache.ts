/**
 * Autotuned matmul tiles, cached per adapter: `deno task bench --tune` measures the candidate
 * tiles of each shape on this adapter and records the fastest here; {@link defaultMatmulTile}
 * then uses the recorded tile for that shape, and its cost model for shapes never tuned.
 *
 * The cache is a small JSON file: $ESFLOW_TILE_CACHE, else $XDG_CACHE_HOME/esflow/matmul-tiles.json,
 * else ~/.cache/esflow/matmul-tiles.json. ESFLOW_TILE_CACHE=off disables it.
 *
 * Tests: tests/tile_cache_test.ts.
 *
 * @module
 */

/** A tile: each invocation owns tm × tn outputs. */
export interface TileChoice {
  tm: number;
  tn: number;
  /** GFLOP/s measured when it was tuned. */
  gflops: number;
}

/** The cache file's content: adapter name → "MxKxN" → the tuned tile. */
export type TileCacheData = Record<string, Record<string, TileChoice>>;

/** The cache file's path, or null when caching is off. */
export function tileCachePath(): string | null {
  const env = (k: string) => {
    try {
      return Deno.env.get(k);
    } catch {
      return undefined; // no --allow-env: behave as if unset
    }
  };
  const explicit = env("ESFLOW_TILE_CACHE");
  if (explicit === "off") return null;
  if (explicit) return explicit;
  const base = env("XDG_CACHE_HOME") ?? (env("HOME") ? `${env("HOME")}/.cache` : null);
  return base ? `${base}/esflow/matmul-tiles.json` : null;
}

let loaded: { path: string | null; data: TileCacheData } | null = null;

/** The cache's content, read once per process (a missing or unreadable file is an empty cache). */
export function readTileCache(): TileCacheData {
  const path = tileCachePath();
  if (loaded && loaded.path === path) return loaded.data;
  let data: TileCacheData = {};
  if (path) {
    try {
      data = JSON.parse(Deno.readTextFileSync(path));
    } catch {
      data = {};
    }
  }
  loaded = { path, data };
  return data;
}

/** The tuned tile of a shape on an adapter, if any. */
export function cachedTile(
  adapter: string,
  shape: { m: number; k: number; n: number },
): TileChoice | undefined {
  return readTileCache()[adapter]?.[shapeKey(shape)];
}

/** Records tuned tiles for an adapter and writes the cache atomically (temp file, rename). */
export async function writeTileCache(
  adapter: string,
  tiles: Record<string, TileChoice>,
): Promise<string> {
  const path = tileCachePath();
  if (!path) throw new Error("the tile cache is off (ESFLOW_TILE_CACHE=off) or has no home");
  const data = { ...readTileCache() };
  data[adapter] = { ...data[adapter], ...tiles };
  await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
  const tmp = `${path}.${Deno.pid}.tmp`;
  await Deno.writeTextFile(tmp, JSON.stringify(data, null, 2) + "\n");
  await Deno.rename(tmp, path);
  loaded = { path, data };
  return path;
}

/** The cache key of a shape. */
export function shapeKey(shape: { m: number; k: number; n: number }): string {
  return `${shape.m}x${shape.k}x${shape.n}`;
}
