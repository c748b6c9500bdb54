/**
 * The data side of an iteration (pipeline/data.ts): determinism and uniformity of the subset
 * draw, the held-out split, truncation, padding, masks, packed targets, and the shipped corpus
 * through the text_lines dataset stage.
 */
import { assert, assertEquals } from "./helpers.ts";
import {
  heldOutBatches,
  iterationBatches,
  packBatches,
  splitHoldout,
  subsetIndices,
  subsetSamples,
  tokenizeSamples,
} from "../pipeline/data.ts";
import "../pipeline/stages/mod.ts";
import { stageType } from "../pipeline/spec.ts";
import type { StageContext } from "../pipeline/stages/types.ts";
import { createBytesTokenizer } from "../tokenizers/mod.ts";
import { NO_TARGET } from "../kernels/log_likelihood.ts";

/** Throws unless `fn` throws a RangeError. */
function assertRangeError(fn: () => unknown, what: string): void {
  try {
    fn();
  } catch (e) {
    assert(e instanceof RangeError, `${what}: threw ${e}, not a RangeError`);
    return;
  }
  throw new Error(`${what}: did not throw`);
}

/** True when xs is strictly ascending (so sorted and free of duplicates). */
function strictlyAscending(xs: readonly number[]): boolean {
  return xs.every((x, i) => i === 0 || xs[i - 1] < x);
}

Deno.test("subsetIndices: same (seed, iteration) gives the same draw; iteration and seed change it", () => {
  const o = { seed: 1234, iteration: 7, size: 64 };
  const a = subsetIndices(10_000, o);
  assertEquals(subsetIndices(10_000, { ...o }), a);
  assert(a.length === 64 && strictlyAscending(a), "64 distinct ascending indices");
  assert(a.every((i) => Number.isInteger(i) && i >= 0 && i < 10_000), "indices in range");
  const other = subsetIndices(10_000, { ...o, iteration: 8 });
  assert(JSON.stringify(other) !== JSON.stringify(a), "iteration 8 draws differently");
  const seed = subsetIndices(10_000, { ...o, seed: 1235 });
  assert(JSON.stringify(seed) !== JSON.stringify(a), "seed 1235 draws differently");
  // A seed above 2^32 uses the key's high word: it must not collapse onto the low word.
  const high = subsetIndices(10_000, { ...o, seed: 1234 + 2 ** 32 });
  assert(JSON.stringify(high) !== JSON.stringify(a), "seed + 2^32 draws differently");
  assertEquals(subsetIndices(10_000, { ...o, seed: BigInt(1234) }), a, "bigint seed, same key");
});

Deno.test("subsetIndices: no duplicates, full and empty draws, size > trainCount throws", () => {
  for (const [n, m] of [[1, 1], [2, 1], [7, 7], [97, 50], [10_000, 5000]]) {
    for (let it = 0; it < 5; it++) {
      const s = subsetIndices(n, { seed: 99, iteration: it, size: m });
      assert(s.length === m && strictlyAscending(s), `n=${n} m=${m}: ${m} distinct indices`);
      assert(s[0] >= 0 && s[m - 1] < n, `n=${n} m=${m}: in range`);
    }
  }
  assertEquals(subsetIndices(5, { seed: 3, iteration: 0, size: 5 }), [0, 1, 2, 3, 4]);
  assertEquals(subsetIndices(5, { seed: 3, iteration: 0, size: 0 }), []);
  assertRangeError(() => subsetIndices(10, { seed: 1, iteration: 0, size: 11 }), "size > count");
  assertRangeError(() => subsetIndices(10, { seed: 1, iteration: -1, size: 2 }), "iteration -1");
  assertRangeError(() => subsetIndices(10, { seed: 1, iteration: 0, size: 1.5 }), "size 1.5");
  assertRangeError(() => subsetIndices(10, { seed: -1, iteration: 0, size: 2 }), "seed -1");
});

Deno.test("subsetIndices: uniform inclusion, pairwise and across iterations", () => {
  // n = 50, m = 10 over K = 4000 iterations. Each index is in a draw with p = m/n = 0.2, so its
  // count is Binomial(K, p): mean 800, sd 25.3. Each pair is in with q = m(m−1)/(n(n−1)):
  // mean 146.9, sd 11.9. Bounds are 5 sd, so a fair draw fails with probability < 1e-3 even
  // over all 1225 pairs (and never here: the draw is deterministic).
  const n = 50, m = 10, K = 4000;
  const single = new Array(n).fill(0);
  const pair = new Array(n * n).fill(0);
  let overlapSum = 0;
  let prev = new Set<number>();
  for (let it = 0; it < K; it++) {
    const s = subsetIndices(n, { seed: 2024, iteration: it, size: m });
    for (let a = 0; a < m; a++) {
      single[s[a]]++;
      for (let b = a + 1; b < m; b++) pair[s[a] * n + s[b]]++;
    }
    if (it > 0) overlapSum += s.filter((i) => prev.has(i)).length;
    prev = new Set(s);
  }
  const p = m / n, mean1 = K * p, sd1 = Math.sqrt(K * p * (1 - p));
  single.forEach((c, i) => {
    assert(
      Math.abs(c - mean1) <= 5 * sd1,
      `index ${i}: in ${c} draws, expected ${mean1} ± ${5 * sd1}`,
    );
  });
  const q = (m * (m - 1)) / (n * (n - 1)), mean2 = K * q, sd2 = Math.sqrt(K * q * (1 - q));
  for (let a = 0; a < n; a++) {
    for (let b = a + 1; b < n; b++) {
      const c = pair[a * n + b];
      assert(
        Math.abs(c - mean2) <= 5 * sd2,
        `pair (${a},${b}): ${c}, expected ${mean2} ± ${5 * sd2}`,
      );
    }
  }
  // Consecutive iterations must be independent draws: their overlap is hypergeometric with
  // mean m²/n = 2 and variance m·p·(1−p)·(n−m)/(n−1); the mean over K−1 pairs has sd 0.018.
  const overlapMean = m * p, overlapVar = m * p * (1 - p) * (n - m) / (n - 1);
  const got = overlapSum / (K - 1), sd3 = Math.sqrt(overlapVar / (K - 1));
  assert(Math.abs(got - overlapMean) <= 5 * sd3, `mean overlap ${got}, expected ${overlapMean}`);
});

Deno.test("subsetIndices: a count that is not a power of two is not biased low", () => {
  // n = 3·2^29 makes w % n without rejection hit [0, 2^30) twice as often as [2^30, n): the
  // lower part would hold 80% of draws instead of 2/3. 4000 draws: sd of the share is 0.0075.
  const n = 3 * 2 ** 29;
  let low = 0, total = 0;
  for (let it = 0; it < 400; it++) {
    for (const i of subsetIndices(n, { seed: 5, iteration: it, size: 10 })) {
      if (i < 2 ** 30) low++;
      total++;
    }
  }
  const share = low / total, sd = Math.sqrt((2 / 3) * (1 / 3) / total);
  assert(Math.abs(share - 2 / 3) <= 5 * sd, `share below 2^30: ${share}, expected 2/3`);
});

Deno.test("splitHoldout: disjoint, covering, sorted, stable, and not the iteration-0 subset", () => {
  const n = 1000;
  const a = splitHoldout(n, { seed: 42, holdout: 100 });
  assertEquals(splitHoldout(n, { seed: 42, holdout: 100 }), a, "same seed, same split");
  assert(a.holdout.length === 100 && a.train.length === 900, "sizes");
  assert(strictlyAscending(a.holdout) && strictlyAscending(a.train), "sorted, no duplicates");
  const held = new Set(a.holdout);
  assert(a.train.every((i) => !held.has(i)), "train and holdout are disjoint");
  assertEquals([...a.train, ...a.holdout].sort((x, y) => x - y), [...Array(n).keys()], "cover");
  const b = splitHoldout(n, { seed: 43, holdout: 100 });
  assert(JSON.stringify(b.holdout) !== JSON.stringify(a.holdout), "another seed, another split");
  // The split has its own Philox stream: it must not repeat the draw of iteration 0.
  const first = subsetIndices(n, { seed: 42, iteration: 0, size: 100 });
  assert(JSON.stringify(first) !== JSON.stringify(a.holdout), "holdout ≠ iteration-0 subset");
  // Held-out samples are spread over the corpus, not its head or tail.
  const meanIndex = a.holdout.reduce((s, i) => s + i, 0) / 100;
  assert(
    Math.abs(meanIndex - 499.5) < 5 * 289 / Math.sqrt(100),
    `held-out mean index ${meanIndex}`,
  );
  assertEquals(splitHoldout(5, { seed: 1, holdout: 0 }), { train: [0, 1, 2, 3, 4], holdout: [] });
  assertEquals(splitHoldout(3, { seed: 1, holdout: 3 }), { train: [], holdout: [0, 1, 2] });
  assertRangeError(() => splitHoldout(3, { seed: 1, holdout: 4 }), "holdout > n");
});

Deno.test("subsetSamples: draws only training samples, never held-out ones", () => {
  const split = splitHoldout(500, { seed: 8, holdout: 50 });
  const held = new Set(split.holdout);
  for (let it = 0; it < 50; it++) {
    const s = subsetSamples(split.train, { seed: 8, iteration: it, size: 40 });
    assert(s.length === 40 && strictlyAscending(s), "40 distinct samples");
    assert(s.every((i) => !held.has(i) && i < 500), `iteration ${it}: a held-out sample drawn`);
  }
});

Deno.test("tokenizeSamples: truncates to maxLen, drops samples under 2 tokens, maps to origin", () => {
  const texts = ["hello world", "", "x", "ab", "a much longer line that gets cut", "é"];
  const { tokens, origin } = tokenizeSamples(texts, createBytesTokenizer(), { maxLen: 8 });
  // "" and "x" have fewer than 2 byte tokens; "é" is two UTF-8 bytes, so it stays.
  assertEquals(origin, [0, 3, 4, 5]);
  assertEquals(tokens[0], [...new TextEncoder().encode("hello wo")]);
  assertEquals(tokens[1], [97, 98]);
  assertEquals(tokens[2].length, 8);
  assertEquals(tokens[3], [0xC3, 0xA9]);
  assertRangeError(() => tokenizeSamples(texts, createBytesTokenizer(), { maxLen: 1 }), "maxLen 1");
});

Deno.test("iterationBatches: micro-batches in order, right-padded to each batch's longest row", () => {
  const tokens = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10], [11, 12], [13, 14, 15]];
  const batches = iterationBatches(tokens, [4, 1, 2, 3, 0], { microBatch: 2, padId: 0 });
  assertEquals(batches.length, 3);
  assertEquals(batches[0], {
    inputIds: [[13, 14, 15], [4, 5, 0]],
    attentionMask: [[1, 1, 1], [1, 1, 0]],
  });
  assertEquals(batches[1], {
    inputIds: [[6, 7, 8, 9, 10], [11, 12, 0, 0, 0]],
    attentionMask: [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]],
  });
  assertEquals(batches[2], { inputIds: [[1, 2, 3]], attentionMask: [[1, 1, 1]] });
  assertEquals(iterationBatches(tokens, [], { microBatch: 4, padId: 0 }), []);
  assertRangeError(() => iterationBatches(tokens, [5], { microBatch: 1, padId: 0 }), "index 5");
  assertRangeError(() => iterationBatches(tokens, [0], { microBatch: 0, padId: 0 }), "batch 0");
});

Deno.test("heldOutBatches: every held-out sample once, batched by length", () => {
  const tokens = [[1, 2, 3, 4], [5, 6], [7, 8, 9], [10, 11], [12, 13, 14, 15, 16]];
  const batches = heldOutBatches(tokens, [0, 1, 2, 4], { microBatch: 2, padId: 99 });
  assertEquals(batches.map((b) => b.inputIds), [
    [[5, 6, 99], [7, 8, 9]],
    [[1, 2, 3, 4, 99], [12, 13, 14, 15, 16]],
  ]);
});

Deno.test("packBatches: ids, masks and targets laid out back to back", () => {
  const tokens = [[1, 2, 3], [4, 5], [6, 7, 8, 9]];
  const batches = iterationBatches(tokens, [0, 1, 2], { microBatch: 2, padId: 0 });
  const packed = packBatches(batches);
  assertEquals(packed.layout, [
    { offset: 0, batch: 2, seqLen: 3, scored: 3 },
    { offset: 6, batch: 1, seqLen: 4, scored: 3 },
  ]);
  assertEquals([...packed.ids], [1, 2, 3, 4, 5, 0, 6, 7, 8, 9]);
  assertEquals([...packed.mask], [1, 1, 1, 1, 1, 0, 1, 1, 1, 1]);
  const X = NO_TARGET;
  // target[b·T+t] = ids[b][t+1] where that next token is real; the last column and the
  // positions before padding score nothing.
  assertEquals([...packed.target], [2, 3, X, 5, X, X, 7, 8, 9, X]);
  assertEquals(packBatches([]).layout, []);
});

Deno.test("packBatches: targets agree with the masks on random ragged batches", () => {
  let state = 12345;
  const rand = (k: number) => (state = (Math.imul(state, 1103515245) + 12345) >>> 0) % k;
  const tokens = Array.from(
    { length: 37 },
    () => Array.from({ length: 2 + rand(20) }, () => rand(256)),
  );
  const batches = iterationBatches(tokens, [...tokens.keys()], { microBatch: 5, padId: 0 });
  const { ids, mask, target, layout } = packBatches(batches);
  let row = 0;
  for (const l of layout) {
    for (let b = 0; b < l.batch; b++, row++) {
      const seq = tokens[row];
      assert(l.seqLen >= seq.length, "a batch is as long as its longest row");
      for (let t = 0; t < l.seqLen; t++) {
        const at = l.offset + b * l.seqLen + t;
        assertEquals(ids[at], t < seq.length ? seq[t] : 0, `ids row ${row} t ${t}`);
        assertEquals(mask[at], t < seq.length ? 1 : 0, `mask row ${row} t ${t}`);
        assertEquals(target[at], t + 1 < seq.length ? seq[t + 1] : NO_TARGET, `target ${row} ${t}`);
      }
    }
    const scored = [...target.subarray(l.offset, l.offset + l.batch * l.seqLen)]
      .filter((v) => v !== NO_TARGET).length;
    assertEquals(l.scored, scored);
  }
  assertEquals(row, 37);
  // Every micro-batch's longest row fills its length: no column is all padding.
  for (const b of batches) {
    assert(b.attentionMask.some((m) => m[m.length - 1] === 1), "no all-padding column");
  }
});

Deno.test("shipped corpus loads through text_lines and feeds an iteration", async () => {
  const stage = stageType("dataset", "text_lines");
  assert(stage, "text_lines is registered");
  const ctx: StageContext = {
    baseDir: new URL("..", import.meta.url).pathname,
    file: "data_test.yaml",
    seed: 1234,
    where: (path) => `data_test.yaml:1:1 (${path.join(".")})`,
  };
  const settings = stage.schema.parse({
    type: "text_lines",
    path: "data/pride_and_prejudice.txt",
    max_lines: 1_000_000,
  });
  const dataset = stage.create(settings);
  // Typed from the schema's defaults: the paper's 5000 per iteration, 256 held out.
  assertEquals([dataset.samplesPerIteration, dataset.holdout], [5000, 256]);
  const lines = await dataset.load(ctx);
  assert(lines.length >= 10_000, `${lines.length} non-empty lines, want ≥ 10,000`);
  assert(lines.every((l) => l.trim().length > 0), "no empty lines");
  assert(lines[0].includes("PRIDE AND PREJUDICE"), "starts with the title");

  // The default tiny pipeline's path: 10,000 lines, 256 held out, 64 per iteration.
  const tokenizer = createBytesTokenizer();
  const { tokens, origin } = tokenizeSamples(lines.slice(0, 10_000), tokenizer, { maxLen: 64 });
  assert(tokens.length === origin.length && tokens.length > 9_900, `${tokens.length} samples`);
  const split = splitHoldout(tokens.length, { seed: 1234, holdout: 256 });
  const picked = subsetSamples(split.train, { seed: 1234, iteration: 0, size: 64 });
  const packed = packBatches(iterationBatches(tokens, picked, { microBatch: 16, padId: 0 }));
  assertEquals(packed.layout.length, 4);
  assert(packed.layout.every((l) => l.batch === 16 && l.seqLen <= 64 && l.scored > 0), "layout");
  const evalBatches = heldOutBatches(tokens, split.holdout, { microBatch: 16, padId: 0 });
  assertEquals(evalBatches.reduce((n, b) => n + b.inputIds.length, 0), 256);
});
