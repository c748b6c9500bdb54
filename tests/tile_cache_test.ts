// Autotuned tiles: the cache file round-trips and the matmul's default selection follows it,
// and the tuned tile still computes the right product.
import { assertClose, assertEquals, randn, seeded, tempDir } from "./helpers.ts";
import { acquireGpu } from "../kernels/runtime.ts";
import { defaultMatmulTile, matmulReference, matmulStep } from "../kernels/matmul.ts";
import { cachedTile, readTileCache, tileCachePath, writeTileCache } from "../kernels/tile_cache.ts";
import { submitSteps } from "../kernels/program.ts";

Deno.test("a tuned tile is cached per adapter and shape and chosen by the default selection", async () => {
  const dir = await tempDir();
  const before = Deno.env.get("ESFLOW_TILE_CACHE");
  Deno.env.set("ESFLOW_TILE_CACHE", `${dir}/tiles.json`);
  const gpu = await acquireGpu();
  try {
    assertEquals(tileCachePath(), `${dir}/tiles.json`);
    assertEquals(readTileCache(), {});
    const shape = { m: 37, k: 20, n: 53 };
    const heuristic = defaultMatmulTile(gpu, shape);
    // Record a tile the cost model would not pick, as a tuning run would after measuring it.
    const forced = heuristic.tm === 8 && heuristic.tn === 4 ? { tm: 4, tn: 8 } : { tm: 8, tn: 4 };
    await writeTileCache(gpu.adapterName, { "37x20x53": { ...forced, gflops: 1.5 } });
    assertEquals(
      JSON.parse(await Deno.readTextFile(`${dir}/tiles.json`))[gpu.adapterName]["37x20x53"].tm,
      forced.tm,
    );
    assertEquals(cachedTile(gpu.adapterName, shape)?.tn, forced.tn);
    assertEquals(defaultMatmulTile(gpu, shape), forced);
    assertEquals(cachedTile("another adapter", shape), undefined);
    // Other shapes keep the cost model.
    assertEquals(
      defaultMatmulTile(gpu, { m: 64, k: 8, n: 64 }),
      (() => {
        Deno.env.set("ESFLOW_TILE_CACHE", "off");
        const t = defaultMatmulTile(gpu, { m: 64, k: 8, n: 64 });
        Deno.env.set("ESFLOW_TILE_CACHE", `${dir}/tiles.json`);
        return t;
      })(),
    );
    // And the product is still right with the tuned tile.
    const rng = seeded(11);
    const x = randn(rng, 37 * 20), w = randn(rng, 53 * 20);
    const xb = gpu.createBuffer("x", x.byteLength, "activations"),
      wb = gpu.createBuffer("w", w.byteLength, "activations");
    const out = gpu.createBuffer("out", 37 * 53 * 4, "activations");
    gpu.write(xb, x);
    gpu.write(wb, w);
    submitSteps(gpu, [matmulStep(gpu, { label: "t", x: xb, m: 37, k: 20, w: wb, n: 53, out })]);
    assertClose(await gpu.readF32(out, 37 * 53), matmulReference(x, w, 37, 20, 53), {
      atol: 1e-4,
      rtol: 1e-4,
    });
  } finally {
    gpu.destroy();
    if (before === undefined) Deno.env.delete("ESFLOW_TILE_CACHE");
    else Deno.env.set("ESFLOW_TILE_CACHE", before);
  }
});
