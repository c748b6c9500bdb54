// Loading and resolving pipelines: defaults, overrides, where() positions, custom stages, and
// every shipped pipeline in configs/ loads and resolves cleanly.
import { z } from "zod";
import {
  closest,
  DEFAULT_PIPELINE_PATH,
  loadPipelineFile,
  loadPipelineText,
} from "../pipeline/load.ts";
import { resolvePipeline } from "../pipeline/resolve.ts";
import { registerStage } from "../pipeline/spec.ts";
import { UserError } from "../errors.ts";
import type { ShapeImpl } from "../pipeline/stages/types.ts";
import { assert, assertEquals } from "./helpers.ts";

const REPO = new URL("..", import.meta.url).pathname;
const CORPUS = `${REPO}data/pride_and_prejudice.txt`;

// Only the stages, with no optional key: every other key takes its default.
const MINIMAL = `dataset:
  type: text_lines
  path: ${CORPUS}
tokenizer: { type: bytes }
model: { type: qwen3, preset: micro }
perturb: { type: gaussian }
fitness: { type: log_likelihood }
shape: { type: rank }
update: { type: es }
`;

function throwsUserError(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    assert(e instanceof UserError, `expected a UserError, got ${e}`);
    assert(!e.message.includes("\n"), `one line: ${e.message}`);
    return e.message;
  }
  throw new Error("no error");
}

Deno.test("load: every omitted key takes its documented default", () => {
  const { spec } = loadPipelineText(MINIMAL, { file: "minimal.yaml" });
  assertEquals(spec.name, "esflow-run");
  assertEquals(spec.seed, 1234);
  assertEquals(spec.iterations, 1000);
  assertEquals(spec.dataset, {
    type: "text_lines",
    path: CORPUS,
    max_lines: 10000,
    samples_per_iteration: 5000,
    holdout: 256,
  });
  assertEquals(spec.model, { type: "qwen3", preset: "micro", init: "random", storage: "f32" });
  assertEquals(spec.perturb, {
    type: "gaussian",
    population: 30,
    sigma: 1e-3,
    antithetic: false,
    decay: { gamma: 1, every: 0 },
    groups: {
      embeddings: { sigma: 1, alpha: 1 },
      attention: { sigma: 1, alpha: 1 },
      mlp: { sigma: 1, alpha: 1 },
      norms: { sigma: 1, alpha: 1 },
      lm_head: { sigma: 1, alpha: 1 },
      layers: [],
    },
    scratch: "chunks",
  });
  assertEquals(spec.fitness, {
    type: "log_likelihood",
    micro_batch: 16,
    max_len: 256,
    member_batch: 1,
  });
  assertEquals(spec.update, { type: "es", alpha: 5e-4, nes: false, decay: { gamma: 1, every: 0 } });
  assertEquals(spec.output, { checkpoint_every: 50, eval_every: 10, status: { port: 8787 } });
});

Deno.test("load: file and baseDir; relative files resolve against the working directory", () => {
  const loaded = loadPipelineText(MINIMAL, { file: "configs/pipelines/x.yaml" });
  assertEquals(loaded.file, "configs/pipelines/x.yaml");
  assertEquals(loaded.baseDir, `${Deno.cwd()}/configs/pipelines`);
  assertEquals(loaded.text, MINIMAL);
});

Deno.test("load: overrides replace the YAML's iterations, seed and output dir", () => {
  const { spec } = loadPipelineText(MINIMAL, {
    file: "p.yaml",
    overrides: { iterations: 6, seed: 99, out: "runs/elsewhere" },
  });
  assertEquals([spec.iterations, spec.seed, spec.output.dir], [6, 99, "runs/elsewhere"]);
  const same = loadPipelineText(MINIMAL, { file: "p.yaml", overrides: {} }).spec;
  assertEquals([same.iterations, same.seed, same.output.dir], [1000, 1234, undefined]);
});

Deno.test("load: bad overrides name the flag", () => {
  const load = (overrides: Record<string, unknown>) => () =>
    loadPipelineText(MINIMAL, { file: "p.yaml", overrides });
  assert(
    throwsUserError(load({ iterations: 0 })).startsWith("--iterations must be a positive integer"),
  );
  assert(throwsUserError(load({ iterations: 2.5 })).startsWith("--iterations"));
  assert(throwsUserError(load({ seed: -3 })).startsWith("--seed must be an integer"));
  assert(throwsUserError(load({ seed: 2 ** 60 })).startsWith("--seed"));
  assert(throwsUserError(load({ out: " " })).startsWith("--out must name a directory"));
});

Deno.test("load: where() points at values, block maps at their key, missing keys at the deepest node", () => {
  const text = `# comment
name: w
perturb:
  type: gaussian
  groups:
    layers:
      - { from: 0, to: 1 }
      - from: 1
        to: 1
model: { type: qwen3, preset: micro }
dataset: { type: text_lines, path: ${CORPUS} }
tokenizer: { type: bytes }
fitness: { type: log_likelihood }
shape: { type: rank }
update: { type: es }
`;
  const { where } = loadPipelineText(text, { file: "w.yaml" });
  assertEquals(where([]), "w.yaml:2:1");
  assertEquals(where(["name"]), "w.yaml:2:7");
  assertEquals(where(["perturb"]), "w.yaml:3:1");
  assertEquals(where(["perturb", "type"]), "w.yaml:4:9");
  assertEquals(where(["perturb", "groups", "layers"]), "w.yaml:6:5");
  assertEquals(where(["perturb", "groups", "layers", 0]), "w.yaml:7:9");
  assertEquals(where(["perturb", "groups", "layers", 0, "to"]), "w.yaml:7:24");
  assertEquals(where(["perturb", "groups", "layers", 1, "to"]), "w.yaml:9:13");
  assertEquals(where(["perturb", "population"]), "w.yaml:3:1");
  assertEquals(where(["perturb", "groups", "layers", 5]), "w.yaml:6:5");
  assertEquals(where(["model"]), "w.yaml:10:8");
  assertEquals(where(["model", "preset"]), "w.yaml:10:31");
  assertEquals(where(["output", "dir"]), "w.yaml:2:1");
});

Deno.test("load: a missing pipeline file is one line naming it", async () => {
  let message = "";
  try {
    await loadPipelineFile("/nonexistent/pipeline.yaml");
  } catch (e) {
    assert(e instanceof UserError);
    message = e.message;
  }
  assert(
    message.startsWith("/nonexistent/pipeline.yaml: cannot read the pipeline (no such file)"),
    message,
  );
});

Deno.test("load: closest() suggests typos, not strangers", () => {
  const keys = ["population", "sigma", "antithetic", "decay", "groups"];
  assertEquals(closest("populaton", keys), "population");
  assertEquals(closest("sigam", keys), "sigma");
  assertEquals(closest("Antithetic", keys), "antithetic");
  assertEquals(closest("lr", keys), undefined);
  assertEquals(closest("shuffle", keys), undefined);
});

Deno.test("load: a custom stage registered from TypeScript is usable, and strict, in YAML", async () => {
  const signShape: ShapeImpl = { shape: (r) => r.map((x) => Math.sign(x - r[0])) };
  registerStage({
    kind: "shape",
    type: "sign_test",
    description: "sign of each fitness against the first member's (a test stage)",
    schema: z.strictObject({
      type: z.literal("sign_test"),
      scale: z.number().positive().default(1),
    }),
    impl: signShape,
  });
  const custom = MINIMAL.replace("shape: { type: rank }", "shape: { type: sign_test }");
  const loaded = loadPipelineText(custom, { file: "c.yaml" });
  assertEquals(loaded.spec.shape, { type: "sign_test", scale: 1 });
  const resolved = await resolvePipeline(loaded);
  assertEquals(resolved.spec.shape.type, "sign_test");
  const typo = MINIMAL.replace("shape: { type: rank }", "shape: { type: sign_test, scael: 2 }");
  const message = throwsUserError(() => loadPipelineText(typo, { file: "c.yaml" }));
  assert(
    message.startsWith("c.yaml:8:27: shape.scael: unknown key 'scael' (did you mean 'scale'?)"),
    message,
  );
  const unknown = throwsUserError(() =>
    loadPipelineText(MINIMAL.replace("type: rank", "type: sign"), { file: "c.yaml" })
  );
  assert(unknown.includes("registered shape types: zscore, rank, sign_test"), unknown);
});

Deno.test("resolve: texts, tokenizer, model and output dir of a minimal pipeline", async () => {
  const loaded = loadPipelineText(
    MINIMAL.replace(
      "type: text_lines",
      "type: text_lines\n  max_lines: 300\n  samples_per_iteration: 8\n  holdout: 8",
    ),
    {
      file: "m.yaml",
      overrides: { seed: 5 },
    },
  );
  const r = await resolvePipeline(loaded);
  assertEquals(r.texts.length, 300);
  assert(r.texts.every((t) => t.trim().length > 0), "no empty samples");
  assertEquals(r.tokenizer.name, "bytes");
  assertEquals(r.config.numLayers, 2);
  assertEquals(r.model.source, "random init (seed 5)");
  assertEquals(r.outDir, "runs/esflow-run");
  assert(r.spec === loaded.spec && r.loaded === loaded);
  const withDir = await resolvePipeline(
    loadPipelineText(MINIMAL, { file: "m.yaml", overrides: { out: "/tmp/x" } }),
  );
  assertEquals(withDir.outDir, "/tmp/x");
});

Deno.test("resolve: a stage's own error without a place gets the setting it names", async () => {
  const text = MINIMAL.replace(
    "tokenizer: { type: bytes }",
    "tokenizer: { type: hf, path: missing/tok.json }",
  );
  let message = "";
  try {
    await resolvePipeline(loadPipelineText(text, { file: `${REPO}tests/t.yaml` }));
  } catch (e) {
    assert(e instanceof UserError);
    message = e.message;
  }
  assert(
    message.startsWith(`${REPO}tests/t.yaml:4:30: tokenizer.path: ${REPO}tests/missing/tok.json`),
    message,
  );
});

Deno.test("the embedded default is configs/pipelines/tiny-austen.yaml", async () => {
  assertEquals(DEFAULT_PIPELINE_PATH, `${REPO}configs/pipelines/tiny-austen.yaml`);
  const { spec } = await loadPipelineFile(DEFAULT_PIPELINE_PATH);
  assertEquals(spec.name, "tiny-austen");
  assertEquals(spec.model.preset, "tiny");
  assertEquals(spec.tokenizer.type, "bytes");
});

const PAPER_SIZES = ["0.5b", "1.7b", "4b", "8b", "14b", "32b"];

Deno.test("the paper's pipelines carry the paper's settings, toggles off", async () => {
  for (const size of PAPER_SIZES) {
    const { spec } = await loadPipelineFile(`${REPO}configs/pipelines/qwen3-${size}.yaml`);
    assertEquals(spec.model.preset, `qwen3-${size}`, size);
    assertEquals(spec.iterations, 1000, size);
    assertEquals(
      [
        spec.dataset.max_lines,
        spec.dataset.samples_per_iteration,
        spec.fitness.micro_batch,
        spec.fitness.max_len,
      ],
      [10000, 5000, 16, 256],
      size,
    );
    assertEquals(
      [spec.perturb.population, spec.perturb.sigma, spec.perturb.antithetic, spec.perturb.decay],
      [30, 1e-3, false, { gamma: 1, every: 0 }],
      size,
    );
    assertEquals([spec.update.alpha, spec.update.nes, spec.update.decay], [5e-4, false, {
      gamma: 1,
      every: 0,
    }], size);
    assertEquals(spec.shape.type, "zscore", size);
    assertEquals(spec.tokenizer.type, "qwen3", size);
    const groups = spec.perturb.groups as Record<string, unknown>;
    for (const g of ["embeddings", "attention", "mlp", "norms", "lm_head"]) {
      assertEquals(groups[g], { sigma: 1, alpha: 1 }, `${size} ${g}`);
    }
    assertEquals(groups.layers, [], size);
  }
});

Deno.test("every shipped pipeline loads and resolves", async () => {
  const files: string[] = [];
  for await (const e of Deno.readDir(`${REPO}configs/pipelines`)) {
    if (e.name.endsWith(".yaml")) files.push(e.name);
  }
  files.sort();
  assertEquals(files, [
    "micro-smoke.yaml",
    ...PAPER_SIZES.map((s) => `qwen3-${s}.yaml`).sort(),
    "reward-tiny-pretrain.yaml",
    "reward-tiny.yaml",
    "tiny-austen-lowrank.yaml",
    "tiny-austen.yaml",
  ]);
  for (const f of files) {
    const loaded = await loadPipelineFile(`${REPO}configs/pipelines/${f}`);
    const r = await resolvePipeline(loaded);
    assert(r.texts.length > (r.spec.dataset.holdout as number), f);
    assertEquals(r.outDir, `runs/${r.spec.name}`, f);
    assert(r.tokenizer.vocabSize <= r.config.vocabSize, f);
  }
});
