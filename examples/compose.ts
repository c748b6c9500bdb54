// Trains a tiny Qwen3 on Pride and Prejudice with ES, composed through mod.ts alone, and prints
// its held-out loss: `deno run -A examples/compose.ts` (about 30 s on 2 CPU cores).
import { acquireDevice, EsEngine, esStrategy, getPreset, loadTokenizer } from "../mod.ts";
import { randomInit, textCorpus } from "../mod.ts";

const device = await acquireDevice(), config = getPreset("tiny");
const novel = await Deno.readTextFile(new URL("../data/pride_and_prejudice.txt", import.meta.url));
const corpus = textCorpus(novel.split("\n").filter((l) => l.trim()).slice(0, 2000), {
  tokenizer: await loadTokenizer("bytes"),
  seed: 1,
  holdout: 64,
  maxLen: 64,
  microBatch: 16,
});
const strategy = esStrategy(config, {
  perturb: { population: 16, sigma: 0.01, antithetic: true },
  update: { alpha: 0.05 },
});
const engine = await EsEngine.create(device, {
  config,
  tensors: randomInit(config, { seed: 1 }),
  seed: 1,
  strategy,
  maxSamples: 64,
  microBatch: 16,
  maxLen: 64,
});
engine.setHeldOut(corpus.heldOut);
for (let t = 0; t < 30; t++) {
  const { fitness } = await engine.evaluate(corpus.batch(t, 16).packed, {
    iteration: t,
    population: strategy.ask(t).members,
    heldOut: false,
  });
  engine.update({ iteration: t, coefficients: strategy.tell(t, fitness).coefficients });
}
console.log(
  `held-out loss ${
    corpus.heldOutLoss(await engine.heldOut()).toFixed(4)
  } nats/byte after 30 iterations on ${device.backend} (${device.name})`,
);
