/**
 * Model directories: opening the golden fixtures, saving and reopening (single file and
 * sharded), atomicity of saves, and the errors a user meets with a wrong or incomplete dir.
 */
import assert from "node:assert/strict";
import { openCheckpoint, saveCheckpoint } from "../model/checkpoint.ts";
import { formatQwen3Config, type Qwen3Config } from "../model/config.ts";
import { getPreset } from "../model/presets.ts";
import {
  bf16BitsToF32,
  f32ToBf16Bits,
  type TensorData,
  writeSafetensors,
} from "../model/safetensors.ts";
import { qwen3TensorSpecs, randomInit } from "../model/weights.ts";

import { assertUserError, withTempDir } from "./helpers.ts";

const FIXTURES = new URL("./fixtures/", import.meta.url).pathname;

function bitsOf(values: Float32Array): number[] {
  return [...new Uint32Array(values.buffer, values.byteOffset, values.length)];
}

function names(dir: string): string[] {
  return [...Deno.readDirSync(dir)].map((e) => e.name).sort();
}

/** Writes a model dir by hand: config.json and one model.safetensors of `tensors`. */
async function writeDir(dir: string, config: Qwen3Config, tensors: TensorData[]): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/config.json`, formatQwen3Config(config));
  await writeSafetensors(`${dir}/model.safetensors`, tensors);
}

Deno.test("openCheckpoint: the golden fixtures", async () => {
  for (
    const [name, dtype, tied] of [["qwen3-tiny-tied-f32", "F32", true], [
      "qwen3-small-untied-bf16",
      "BF16",
      false,
    ]] as const
  ) {
    const ckpt = await openCheckpoint(`${FIXTURES}${name}`);
    try {
      assert.equal(ckpt.config.tieWordEmbeddings, tied);
      const specs = qwen3TensorSpecs(ckpt.config);
      assert.deepEqual([...ckpt.tensors.keys()], specs.map((s) => s.name));
      for (const spec of specs) {
        assert.deepEqual(ckpt.tensors.get(spec.name), { dtype, shape: spec.shape });
      }
      assert.equal(ckpt.tensors.has("lm_head.weight"), !tied);
      const norm = await ckpt.read("model.norm.weight");
      assert.equal(norm.length, ckpt.config.hiddenSize);
      await assertUserError(
        () => ckpt.read("model.layers.99.mlp.up_proj.weight"),
        "model.layers.99",
      );
    } finally {
      ckpt.close();
    }
  }
});

Deno.test("save and open: F32 is exact, BF16 and F16 round to nearest even", async () => {
  await withTempDir(async (root) => {
    const config = getPreset("micro");
    const tensors = [...randomInit(config, { seed: 5 })];
    for (const dtype of ["F32", "BF16", "F16"] as const) {
      const dir = `${root}/m-${dtype}`;
      await saveCheckpoint(dir, { config, tensors: randomInit(config, { seed: 5 }), dtype });
      assert.deepEqual(names(dir), ["config.json", "model.safetensors"]);
      const written = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
      const torchDtype = { F32: "float32", BF16: "bfloat16", F16: "float16" }[dtype];
      assert.deepEqual(written, JSON.parse(formatQwen3Config({ ...config, torchDtype })));
      const ckpt = await openCheckpoint(dir);
      try {
        assert.deepEqual(ckpt.config, { ...config, torchDtype });
        for (const t of tensors) {
          assert.equal(ckpt.tensors.get(t.name)!.dtype, dtype);
          const want = dtype === "F32"
            ? t.data
            : dtype === "BF16"
            ? bf16BitsToF32(f32ToBf16Bits(t.data))
            : new Float32Array(new Float16Array(t.data));
          assert.deepEqual(bitsOf(await ckpt.read(t.name)), bitsOf(want), t.name);
        }
      } finally {
        ckpt.close();
      }
    }
    assert.deepEqual(names(root), ["m-BF16", "m-F16", "m-F32"], "no temp dirs or files left");
  });
});

Deno.test("save and open: sharded with a max shard size, tensors streamed in any order", async () => {
  await withTempDir(async (root) => {
    const config = { ...getPreset("micro"), tieWordEmbeddings: false, attentionBias: true };
    const tensors = [...randomInit(config, { seed: 9 })];
    async function* shuffled() {
      for (let i = 0; i < tensors.length; i++) yield tensors[(i * 7) % tensors.length];
    }
    assert.equal(
      new Set(Array.from({ length: tensors.length }, (_, i) => (i * 7) % tensors.length)).size,
      tensors.length,
    );
    const dir = `${root}/sharded`;
    await saveCheckpoint(dir, { config, tensors: shuffled(), maxShardBytes: 100_000 });
    const files = names(dir);
    assert.ok(files.includes("model.safetensors.index.json"));
    assert.ok(!files.includes("model.safetensors"));
    assert.ok(
      files.filter((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f)).length >= 2,
      files.join(" "),
    );
    const ckpt = await openCheckpoint(dir);
    try {
      assert.deepEqual([...ckpt.tensors.keys()], qwen3TensorSpecs(config).map((s) => s.name));
      for (const t of tensors) {
        assert.deepEqual(bitsOf(await ckpt.read(t.name)), bitsOf(t.data), t.name);
      }
    } finally {
      ckpt.close();
    }
    assert.deepEqual(names(root), ["sharded"]);
  });
});

Deno.test("tied models: lm_head.weight in the file is accepted and ignored; on save it is dropped", async () => {
  await withTempDir(async (root) => {
    const config = getPreset("micro");
    const tensors = [...randomInit(config, { seed: 1 })];
    const head = { name: "lm_head.weight", shape: [256, 64], data: tensors[0].data };
    await writeDir(`${root}/with-head`, config, [...tensors, head]);
    const ckpt = await openCheckpoint(`${root}/with-head`);
    assert.equal(ckpt.tensors.has("lm_head.weight"), false);
    assert.equal(ckpt.tensors.size, tensors.length);
    await assertUserError(() => ckpt.read("lm_head.weight"), "lm_head.weight");
    ckpt.close();

    await saveCheckpoint(`${root}/saved`, { config, tensors: [...tensors, head] });
    const saved = await openCheckpoint(`${root}/saved`);
    assert.equal(saved.tensors.size, tensors.length);
    saved.close();
  });
});

Deno.test("openCheckpoint errors: missing dir, config.json, weights", async () => {
  await withTempDir(async (root) => {
    await assertUserError(
      () => openCheckpoint(`${root}/nope`),
      `model dir ${root}/nope does not exist`,
    );
    await Deno.writeTextFile(`${root}/file`, "x");
    await assertUserError(() => openCheckpoint(`${root}/file`), `${root}/file`, "not a directory");
    await Deno.mkdir(`${root}/empty`);
    await assertUserError(
      () => openCheckpoint(`${root}/empty`),
      `${root}/empty`,
      "config.json is missing",
    );
    await Deno.writeTextFile(`${root}/empty/config.json`, formatQwen3Config(getPreset("micro")));
    await assertUserError(
      () => openCheckpoint(`${root}/empty`),
      `${root}/empty`,
      "no weights",
      "model.safetensors",
      "model.safetensors.index.json",
    );
    await Deno.writeTextFile(`${root}/empty/config.json`, JSON.stringify({ model_type: "llama" }));
    await assertUserError(
      () => openCheckpoint(`${root}/empty`),
      `${root}/empty/config.json`,
      '"llama"',
    );
  });
});

Deno.test("openCheckpoint errors: weights that don't match config.json", async () => {
  await withTempDir(async (root) => {
    const config = getPreset("micro");
    const tensors = [...randomInit(config, { seed: 2 })];

    // config.json says 4 kv heads: k_proj should be [128, 64], the file has [64, 64].
    await writeDir(`${root}/shape`, config, tensors);
    await Deno.writeTextFile(
      `${root}/shape/config.json`,
      formatQwen3Config({ ...config, numKvHeads: 4 }),
    );
    await assertUserError(
      () => openCheckpoint(`${root}/shape`),
      `${root}/shape/model.safetensors`,
      "model.layers.0.self_attn.k_proj.weight",
      "[64, 64]",
      "[128, 64]",
    );

    // Untied config, no lm_head in the file.
    await writeDir(`${root}/untied`, { ...config, tieWordEmbeddings: false }, tensors);
    await assertUserError(
      () => openCheckpoint(`${root}/untied`),
      "lm_head.weight [256, 64] is missing",
      "tie_word_embeddings",
    );

    // A layer short.
    await writeDir(
      `${root}/short`,
      config,
      tensors.filter((t) => !t.name.startsWith("model.layers.1.")),
    );
    await assertUserError(
      () => openCheckpoint(`${root}/short`),
      "model.layers.1.input_layernorm.weight [64] is missing",
    );

    // A tensor the config doesn't know.
    await writeDir(`${root}/extra`, config, [...tensors, {
      name: "model.layers.2.x",
      shape: [1],
      data: new Float32Array(1),
    }]);
    await assertUserError(
      () => openCheckpoint(`${root}/extra`),
      "unexpected tensor model.layers.2.x",
    );

    // A corrupt weights file is reported by the reader, naming it.
    await writeDir(`${root}/corrupt`, config, tensors);
    const path = `${root}/corrupt/model.safetensors`;
    const bytes = await Deno.readFile(path);
    await Deno.writeFile(path, bytes.subarray(0, bytes.length - 4));
    await assertUserError(() => openCheckpoint(`${root}/corrupt`), path, "file truncated");
  });
});

Deno.test("saveCheckpoint is atomic: failures leave nothing, overwrite replaces whole", async () => {
  await withTempDir(async (root) => {
    const config = getPreset("micro");
    const dir = `${root}/ckpt`;
    function* dies(): Generator<TensorData> {
      let n = 0;
      for (const t of randomInit(config, { seed: 3 })) {
        if (n++ === 5) throw new Error("trainer crashed");
        yield t;
      }
    }
    await assert.rejects(saveCheckpoint(dir, { config, tensors: dies() }), /trainer crashed/);
    assert.deepEqual(names(root), [], "no final dir and no temp dir after a failed save");

    const short = [...randomInit(config, { seed: 3 })].slice(1);
    await assert.rejects(saveCheckpoint(dir, { config, tensors: short }), /never written/);
    assert.deepEqual(names(root), []);

    await assert.rejects(
      saveCheckpoint(dir, {
        config,
        tensors: [{ name: "bogus", shape: [1], data: new Float32Array(1) }],
      }),
      /"bogus" is not part/,
    );
    assert.deepEqual(names(root), []);

    await saveCheckpoint(dir, {
      config,
      tensors: randomInit(config, { seed: 3 }),
      files: { "state.json": '{"iteration":3}\n' },
    });
    assert.deepEqual(names(root), ["ckpt"]);
    assert.deepEqual(names(dir), ["config.json", "model.safetensors", "state.json"]);
    assert.equal(await Deno.readTextFile(`${dir}/state.json`), '{"iteration":3}\n');

    await assertUserError(
      () => saveCheckpoint(dir, { config, tensors: [] }),
      dir,
      "already exists",
    );
    // A failed overwrite keeps the old checkpoint intact.
    await assert.rejects(
      saveCheckpoint(dir, { config, tensors: dies(), overwrite: true }),
      /trainer crashed/,
    );
    assert.deepEqual(names(root), ["ckpt"]);
    assert.deepEqual(names(dir), ["config.json", "model.safetensors", "state.json"]);

    await saveCheckpoint(dir, {
      config,
      tensors: randomInit(config, { seed: 4 }),
      overwrite: true,
      dtype: "BF16",
    });
    assert.deepEqual(names(root), ["ckpt"]);
    assert.deepEqual(
      names(dir),
      ["config.json", "model.safetensors"],
      "the old dir is replaced, not merged",
    );
    const ckpt = await openCheckpoint(dir);
    const embed = await ckpt.read("model.embed_tokens.weight");
    const want = bf16BitsToF32(f32ToBf16Bits([...randomInit(config, { seed: 4 })][0].data));
    assert.deepEqual(bitsOf(embed), bitsOf(want));
    ckpt.close();
  });
});

Deno.test("saveCheckpoint creates missing parent dirs and accepts a trailing slash", async () => {
  await withTempDir(async (root) => {
    const config = getPreset("micro");
    await saveCheckpoint(`${root}/runs/a/final/`, {
      config,
      tensors: randomInit(config, { seed: 1 }),
    });
    assert.deepEqual(names(`${root}/runs/a`), ["final"]);
    const ckpt = await openCheckpoint(`${root}/runs/a/final/`);
    assert.equal(ckpt.tensors.size, qwen3TensorSpecs(config).length);
    ckpt.close();
  });
});

// ---- the tokenizer beside config.json, as save_pretrained writes it ------------------------

Deno.test("saveCheckpoint with a tokenizer writes tokenizer.json, tokenizer_config.json, generation_config.json", async () => {
  const { loadTokenizer, tokenizerOfCheckpoint } = await import("../tokenizers/mod.ts");
  await withTempDir(async (dir) => {
    const config = getPreset("micro");
    const tokenizer = await loadTokenizer("bytes");
    await saveCheckpoint(`${dir}/m`, {
      config,
      tensors: randomInit(config, { seed: 1 }),
      tokenizer,
      files: { "state.json": "{}\n" },
    });
    const names = [];
    for await (const e of Deno.readDir(`${dir}/m`)) names.push(e.name);
    assert.deepEqual(names.sort(), [
      "config.json",
      "generation_config.json",
      "model.safetensors",
      "state.json",
      "tokenizer.json",
      "tokenizer_config.json",
    ]);
    const back = await tokenizerOfCheckpoint(`${dir}/m`);
    assert.equal(back?.tokenizer.name, "bytes");
    // The dir still opens as a model, the extra files ignored.
    (await openCheckpoint(`${dir}/m`)).close();
    // Without a tokenizer, nothing beside the weights but what `files` names.
    await saveCheckpoint(`${dir}/bare`, { config, tensors: randomInit(config, { seed: 1 }) });
    assert.equal(await tokenizerOfCheckpoint(`${dir}/bare`), null);
  });
});
