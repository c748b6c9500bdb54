/**
 * The safetensors reader and writer on real files: the golden fixtures, round trips in F32, BF16
 * and F16, sharded sets, and one crafted bad file per fault the reader must reject.
 */
import assert from "node:assert/strict";
import { loadConfigFile } from "../model/config.ts";
import {
  bf16BitsToF32,
  f32ToBf16Bits,
  openSafetensors,
  SafetensorsWriter,
  type TensorData,
  writeSafetensors,
} from "../model/safetensors.ts";
import {
  openSafetensorsIndex,
  planShards,
  writeShardedSafetensors,
} from "../model/safetensors_index.ts";
import { getPreset } from "../model/presets.ts";
import { qwen3TensorSpecs, randomInit } from "../model/weights.ts";

import { assertUserError, withTempDir } from "./helpers.ts";

const FIXTURES = new URL("./fixtures/", import.meta.url).pathname;

/** The bytes of a safetensors file with this header object and data buffer. */
function craft(
  header: unknown,
  data: Uint8Array,
  options: { rawHeader?: string } = {},
): Uint8Array {
  const json = new TextEncoder().encode(options.rawHeader ?? JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

function bitsOf(values: Float32Array): number[] {
  return [...new Uint32Array(values.buffer, values.byteOffset, values.length)];
}

/** f32 from raw bits. */
function f32(bits: number): number {
  return new Float32Array(new Uint32Array([bits]).buffer)[0];
}

function randomTensor(name: string, shape: number[], seed: number): TensorData {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    data[i] = (x / 2 ** 32 - 0.5) * 8;
  }
  return { name, shape, data };
}

Deno.test("fixtures: names, shapes and dtypes match qwen3TensorSpecs", async () => {
  for (
    const [name, dtype] of [["qwen3-tiny-tied-f32", "F32"], ["qwen3-small-untied-bf16", "BF16"]]
  ) {
    const cfg = await loadConfigFile(`${FIXTURES}${name}/config.json`);
    const file = await openSafetensors(`${FIXTURES}${name}/model.safetensors`);
    try {
      assert.deepEqual(file.metadata, { format: "pt" });
      const specs = qwen3TensorSpecs(cfg);
      assert.deepEqual([...file.tensors.keys()].sort(), specs.map((s) => s.name).sort());
      for (const spec of specs) {
        const entry = file.tensors.get(spec.name)!;
        assert.deepEqual(entry.shape, spec.shape, spec.name);
        assert.equal(entry.dtype, dtype);
        const data = await file.read(spec.name);
        assert.equal(data.length, spec.shape.reduce((a, b) => a * b, 1));
        assert.ok(data.every(Number.isFinite), `${spec.name} has non-finite values`);
        if (spec.init === "ones") assert.ok(data.some((v) => v !== 0), `${spec.name} is all zero`);
      }
    } finally {
      file.close();
    }
  }
});

Deno.test("fixtures: read() decodes the exact bytes on disk (F32 and BF16)", async () => {
  for (const name of ["qwen3-tiny-tied-f32", "qwen3-small-untied-bf16"]) {
    const path = `${FIXTURES}${name}/model.safetensors`;
    const bytes = await Deno.readFile(path);
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
    const file = await openSafetensors(path);
    try {
      for (
        const tensor of ["model.embed_tokens.weight", "model.layers.1.self_attn.k_norm.weight"]
      ) {
        const [begin, end] = header[tensor].data_offsets;
        const raw = bytes.slice(8 + n + begin, 8 + n + end);
        const want = header[tensor].dtype === "F32"
          ? new Float32Array(raw.buffer)
          : bf16BitsToF32(new Uint16Array(raw.buffer));
        assert.deepEqual(bitsOf(await file.read(tensor)), bitsOf(want), `${name} ${tensor}`);
      }
    } finally {
      file.close();
    }
  }
});

Deno.test("concurrent reads on one file return the right tensors", async () => {
  const file = await openSafetensors(`${FIXTURES}qwen3-small-untied-bf16/model.safetensors`);
  try {
    const names = [...file.tensors.keys()];
    const sequential = [];
    for (const name of names) sequential.push(await file.read(name));
    const parallel = await Promise.all(names.map((name) => file.read(name)));
    for (let i = 0; i < names.length; i++) {
      assert.deepEqual(bitsOf(parallel[i]), bitsOf(sequential[i]));
    }
    await assertUserError(() => file.read("no.such.tensor"), "no.such.tensor");
  } finally {
    file.close();
  }
});

Deno.test("F32 round trip is bit exact, including NaN, infinities, -0 and subnormals", async () => {
  await withTempDir(async (dir) => {
    const special = new Float32Array([
      NaN,
      Infinity,
      -Infinity,
      -0,
      0,
      1e-45,
      -1e-40,
      3.4e38,
      f32(0x7f800001),
    ]);
    const tensors = [
      randomTensor("b.weight", [3, 5], 1),
      { name: "a.special", shape: [special.length], data: special },
      randomTensor("c.scalar", [], 2),
      { name: "d.empty", shape: [0, 4], data: new Float32Array(0) },
    ];
    const path = `${dir}/x.safetensors`;
    await writeSafetensors(path, tensors, { dtype: "F32" });
    const file = await openSafetensors(path);
    try {
      assert.deepEqual([...file.tensors.keys()], ["a.special", "b.weight", "c.scalar", "d.empty"]);
      for (const t of tensors) {
        assert.deepEqual(file.tensors.get(t.name), { dtype: "F32", shape: t.shape });
        assert.deepEqual(bitsOf(await file.read(t.name)), bitsOf(t.data), t.name);
      }
    } finally {
      file.close();
    }
  });
});

Deno.test("written header: padded with spaces to 8, format pt, names sorted, offsets in order", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/x.safetensors`;
    await writeSafetensors(path, [randomTensor("zeta", [3], 1), randomTensor("alpha", [1], 2)], {
      dtype: "BF16",
      metadata: { note: "hi" },
    });
    const bytes = await Deno.readFile(path);
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assert.equal(n % 8, 0);
    const text = new TextDecoder().decode(bytes.subarray(8, 8 + n));
    assert.match(text, /^\{.*\} *$/);
    const header = JSON.parse(text);
    assert.deepEqual(Object.keys(header), ["__metadata__", "alpha", "zeta"]);
    assert.deepEqual(header.__metadata__, { note: "hi", format: "pt" });
    assert.deepEqual(header.alpha, { dtype: "BF16", shape: [1], data_offsets: [0, 2] });
    assert.deepEqual(header.zeta, { dtype: "BF16", shape: [3], data_offsets: [2, 8] });
    assert.equal(bytes.length, 8 + n + 8);
  });
});

Deno.test("BF16 rounds to nearest even, keeps NaN, overflows to Infinity", async () => {
  const cases: [number, number][] = [
    [1 + 2 ** -8, 0x3f80], // tie between 1 and 1+2^-7: to even (1)
    [1 + 3 * 2 ** -8, 0x3f82], // tie between 1+2^-7 (odd) and 1+2^-6: to even (up)
    [1 + 2 ** -8 + 2 ** -20, 0x3f81], // just above the tie: up
    [1 + 2 ** -8 - 2 ** -20, 0x3f80], // just below the tie: down
    [-(1 + 3 * 2 ** -8), 0xbf82],
    [1, 0x3f80],
    [-0, 0x8000],
    [Infinity, 0x7f80],
    [-Infinity, 0xff80],
    [f32(0x7f7fffff), 0x7f80], // f32 max rounds past bf16 max
    [f32(0x00000001), 0x0000], // smallest subnormal rounds to 0
    [f32(0x00018000), 0x0002], // subnormal tie, odd below: up to even
  ];
  const values = new Float32Array(cases.map(([v]) => v));
  const bits = f32ToBf16Bits(values);
  assert.deepEqual([...bits], cases.map(([, b]) => b));
  for (const nanBits of [0x7fc00000, 0x7f800001, 0xffc00001, 0x7fff0000]) {
    const b = f32ToBf16Bits(new Float32Array([f32(nanBits)]))[0];
    assert.ok(
      Number.isNaN(bf16BitsToF32(new Uint16Array([b]))[0]),
      `NaN ${nanBits.toString(16)} lost`,
    );
    assert.equal(b >>> 15, nanBits >>> 31, "NaN sign kept");
  }

  await withTempDir(async (dir) => {
    const path = `${dir}/bf16.safetensors`;
    const nan = new Float32Array([f32(0x7f800001)]);
    await writeSafetensors(path, [
      { name: "cases", shape: [values.length], data: values },
      { name: "nan", shape: [1], data: nan },
      randomTensor("random", [7, 9], 3),
    ], { dtype: "BF16" });
    const file = await openSafetensors(path);
    try {
      assert.equal(file.tensors.get("cases")!.dtype, "BF16");
      assert.deepEqual(bitsOf(await file.read("cases")), cases.map(([, b]) => b << 16 >>> 0));
      assert.ok(Number.isNaN((await file.read("nan"))[0]));
      const random = randomTensor("random", [7, 9], 3).data;
      const back = await file.read("random");
      for (let i = 0; i < random.length; i++) {
        assert.ok(Math.abs(back[i] - random[i]) <= Math.abs(random[i]) * 2 ** -8, `element ${i}`);
      }
      assert.deepEqual(bitsOf(back), bitsOf(bf16BitsToF32(f32ToBf16Bits(random))));
    } finally {
      file.close();
    }
  });
});

Deno.test("F16 round trip rounds to nearest even and keeps specials", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/f16.safetensors`;
    const values = new Float32Array([
      1 + 2 ** -11,
      1 + 3 * 2 ** -11,
      65504,
      65520,
      -0,
      2 ** -24,
      NaN,
      -Infinity,
      0.1,
    ]);
    await writeSafetensors(path, [{ name: "v", shape: [values.length], data: values }], {
      dtype: "F16",
    });
    const file = await openSafetensors(path);
    try {
      assert.equal(file.tensors.get("v")!.dtype, "F16");
      const back = await file.read("v");
      assert.deepEqual([...back.slice(0, 6)], [1, 1 + 2 ** -9, 65504, Infinity, -0, 2 ** -24]);
      assert.ok(Object.is(back[4], -0));
      assert.ok(Number.isNaN(back[6]));
      assert.equal(back[7], -Infinity);
      assert.equal(back[8], new Float16Array([0.1])[0]);
    } finally {
      file.close();
    }
  });
});

Deno.test("large tensors convert in chunks (BF16 and F16 past 2^20 elements)", async () => {
  await withTempDir(async (dir) => {
    const t = randomTensor("big", [3, (1 << 20) / 2 + 7], 9);
    for (const dtype of ["BF16", "F16"] as const) {
      const path = `${dir}/${dtype}.safetensors`;
      await writeSafetensors(path, [t], { dtype });
      const file = await openSafetensors(path);
      try {
        const back = await file.read("big");
        const want = dtype === "BF16"
          ? bf16BitsToF32(f32ToBf16Bits(t.data))
          : new Float32Array(new Float16Array(t.data));
        assert.deepEqual(bitsOf(back), bitsOf(want));
      } finally {
        file.close();
      }
    }
  });
});

Deno.test("streaming write: layout first, tensors in any order from an async stream", async () => {
  await withTempDir(async (dir) => {
    const tensors = [
      randomTensor("x.a", [4, 4], 1),
      randomTensor("x.b", [2], 2),
      randomTensor("x.c", [3, 1], 3),
    ];
    const layout = tensors.map(({ name, shape }) => ({ name, shape }));
    async function* backwards() {
      for (const t of tensors.slice().reverse()) yield t;
    }
    const path = `${dir}/s.safetensors`;
    await writeSafetensors(path, backwards(), { layout });
    const file = await openSafetensors(path);
    try {
      for (const t of tensors) assert.deepEqual(bitsOf(await file.read(t.name)), bitsOf(t.data));
    } finally {
      file.close();
    }
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["s.safetensors"]);
  });
});

Deno.test("writer failures leave neither the file nor a temp file behind", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/w.safetensors`;
    const layout = [{ name: "a", shape: [2] }, { name: "b", shape: [3] }];
    await assert.rejects(
      writeSafetensors(path, [{ name: "a", shape: [2], data: new Float32Array(2) }], { layout }),
      /never written/,
    );
    await assert.rejects(
      writeSafetensors(path, [{ name: "a", shape: [3], data: new Float32Array(3) }], { layout }),
      /shape \[3\], planned \[2\]/,
    );
    await assert.rejects(
      writeSafetensors(path, [{ name: "zzz", shape: [2], data: new Float32Array(2) }], { layout }),
      /not in the planned layout/,
    );
    function* failing(): Generator<TensorData> {
      yield { name: "a", shape: [2], data: new Float32Array(2) };
      throw new Error("producer died");
    }
    await assert.rejects(writeSafetensors(path, failing(), { layout }), /producer died/);
    const w = await SafetensorsWriter.create(path, layout);
    await w.abort();
    assert.deepEqual([...Deno.readDirSync(dir)], []);
  });
});

Deno.test("atomic overwrite: the old file stays until the new one is complete", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/m.safetensors`;
    await writeSafetensors(path, [randomTensor("old", [2], 1)]);
    const w = await SafetensorsWriter.create(path, [{ name: "new", shape: [2] }]);
    const during = await openSafetensors(path);
    assert.deepEqual([...during.tensors.keys()], ["old"]);
    during.close();
    await w.write(randomTensor("new", [2], 2));
    await w.commit();
    const after = await openSafetensors(path);
    assert.deepEqual([...after.tensors.keys()], ["new"]);
    after.close();
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["m.safetensors"]);
  });
});

Deno.test("opening reads the header only: a sparse multi-GB file opens and reads one tensor", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/sparse.safetensors`;
    const bigBytes = 3 * 2 ** 30; // 3 GiB of F32, never written: a sparse hole
    const header = {
      big: { dtype: "F32", shape: [bigBytes / 4], data_offsets: [0, bigBytes] },
      small: { dtype: "F32", shape: [2], data_offsets: [bigBytes, bigBytes + 8] },
    };
    const head = craft(header, new Uint8Array(0));
    const file = await Deno.open(path, { write: true, create: true });
    await file.write(head);
    await file.seek(head.length + bigBytes, Deno.SeekMode.Start);
    await file.write(new Uint8Array(new Float32Array([1.5, -2]).buffer));
    file.close();
    const st = await openSafetensors(path);
    try {
      assert.deepEqual(st.tensors.get("big"), { dtype: "F32", shape: [bigBytes / 4] });
      assert.deepEqual([...(await st.read("small"))], [1.5, -2]);
    } finally {
      st.close();
    }
  });
});

Deno.test("malformed files: each fault is a one-line UserError naming the file", async () => {
  await withTempDir(async (dir) => {
    const f32x4 = new Uint8Array(16);
    const ok = { t: { dtype: "F32", shape: [2, 2], data_offsets: [0, 16] } };
    const lengthPrefix = (n: bigint, rest: Uint8Array) => {
      const out = new Uint8Array(8 + rest.length);
      new DataView(out.buffer).setBigUint64(0, n, true);
      out.set(rest, 8);
      return out;
    };
    const cases: [string, Uint8Array, string][] = [
      ["empty", new Uint8Array(0), "shorter than the 8-byte"],
      ["short", new Uint8Array(5), "shorter than the 8-byte"],
      ["header_past_end", lengthPrefix(1000n, new TextEncoder().encode("{}")), "larger than the"],
      [
        "header_huge",
        lengthPrefix(200_000_000n, new Uint8Array(16)),
        "exceeds the 100000000-byte limit",
      ],
      ["header_u64_max", lengthPrefix(0xffffffffffffffffn, new Uint8Array(16)), "exceeds"],
      [
        "bad_json",
        craft(null, f32x4, { rawHeader: '{"t": {"dtype": "F32",' }),
        "not valid UTF-8 JSON",
      ],
      [
        "bad_utf8",
        lengthPrefix(4n, new Uint8Array([0x7b, 0xff, 0xfe, 0x7d])),
        "not valid UTF-8 JSON",
      ],
      ["not_object", craft([1, 2], new Uint8Array(0)), "not a JSON object"],
      [
        "unknown_dtype",
        craft({ t: { dtype: "I64", shape: [2], data_offsets: [0, 16] } }, f32x4),
        '"I64"',
      ],
      [
        "size_mismatch",
        craft({ t: { dtype: "F32", shape: [2, 2], data_offsets: [0, 12] } }, new Uint8Array(12)),
        "spans 12 bytes but F32 [2, 2] needs 16",
      ],
      [
        "bf16_size",
        craft({ t: { dtype: "BF16", shape: [4], data_offsets: [0, 16] } }, f32x4),
        "needs 8",
      ],
      [
        "overlap",
        craft({
          a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
          b: { dtype: "F32", shape: [2], data_offsets: [4, 12] },
        }, new Uint8Array(12)),
        "overlaps",
      ],
      [
        "duplicate_range",
        craft({
          a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
          b: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
        }, new Uint8Array(8)),
        "overlaps",
      ],
      [
        "gap",
        craft({
          a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
          b: { dtype: "F32", shape: [2], data_offsets: [12, 20] },
        }, new Uint8Array(20)),
        "gap in the data buffer at bytes 8..12",
      ],
      [
        "leading_gap",
        craft({ t: { dtype: "F32", shape: [2], data_offsets: [4, 12] } }, new Uint8Array(12)),
        "gap",
      ],
      ["trailing_bytes", craft(ok, new Uint8Array(20)), "trailing bytes"],
      ["truncated_data", craft(ok, new Uint8Array(10)), "file truncated"],
      [
        "offsets_reversed",
        craft({ t: { dtype: "F32", shape: [0], data_offsets: [8, 0] } }, new Uint8Array(8)),
        "not [begin, end]",
      ],
      [
        "offsets_negative",
        craft({ t: { dtype: "F32", shape: [2], data_offsets: [-8, 0] } }, new Uint8Array(0)),
        "not [begin, end]",
      ],
      [
        "offsets_missing",
        craft({ t: { dtype: "F32", shape: [2] } }, new Uint8Array(8)),
        "not [begin, end]",
      ],
      [
        "shape_fraction",
        craft({ t: { dtype: "F32", shape: [1.5], data_offsets: [0, 6] } }, new Uint8Array(6)),
        "not a list of counts",
      ],
      ["entry_not_object", craft({ t: 5 }, new Uint8Array(0)), "is not an object"],
      [
        "metadata_not_strings",
        craft({ __metadata__: { format: 1 } }, new Uint8Array(0)),
        '"__metadata__"',
      ],
    ];
    for (const [name, bytes, fault] of cases) {
      const path = `${dir}/${name}.safetensors`;
      await Deno.writeFile(path, bytes);
      await assertUserError(() => openSafetensors(path), path, fault);
    }
    await assertUserError(
      () => openSafetensors(`${dir}/absent.safetensors`),
      `${dir}/absent.safetensors`,
      "does not exist",
    );
  });
});

Deno.test("a valid crafted file with zero-size tensors and metadata opens", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/ok.safetensors`;
    await Deno.writeFile(
      path,
      craft({
        __metadata__: { format: "pt", x: "y" },
        e: { dtype: "F16", shape: [0], data_offsets: [4, 4] },
        t: { dtype: "F16", shape: [2], data_offsets: [0, 4] },
      }, new Uint8Array(new Float16Array([0.5, -3]).buffer)),
    );
    const file = await openSafetensors(path);
    try {
      assert.deepEqual(file.metadata, { format: "pt", x: "y" });
      assert.deepEqual([...(await file.read("t"))], [0.5, -3]);
      assert.equal((await file.read("e")).length, 0);
    } finally {
      file.close();
    }
  });
});

Deno.test("sharded: write with a max shard size, read back through the index", async () => {
  await withTempDir(async (dir) => {
    const cfg = getPreset("micro");
    const layout = qwen3TensorSpecs(cfg);
    const tensors = [...randomInit(cfg, { seed: 7 })];
    const maxShardBytes = 64 * 1024;
    const { files, totalBytes } = await writeShardedSafetensors(dir, tensors, {
      dtype: "F32",
      layout,
      maxShardBytes,
    });
    const shards = planShards(layout, { dtype: "F32", maxShardBytes });
    assert.ok(shards.length >= 3, `only ${shards.length} shards`);
    const count = String(shards.length).padStart(5, "0");
    assert.equal(files[0], `model-00001-of-${count}.safetensors`);
    assert.equal(files.at(-1), "model.safetensors.index.json");
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), files.slice().sort());
    for (const shard of files.slice(0, -1)) {
      const size = (await Deno.stat(`${dir}/${shard}`)).size;
      const f = await openSafetensors(`${dir}/${shard}`);
      let bytes = 0;
      for (const t of f.tensors.values()) bytes += t.shape.reduce((a, b) => a * b, 1) * 4;
      f.close();
      assert.ok(
        bytes <= maxShardBytes || f.tensors.size === 1,
        `${shard}: ${bytes} bytes in ${size}`,
      );
    }
    const index = JSON.parse(await Deno.readTextFile(`${dir}/model.safetensors.index.json`));
    assert.equal(index.metadata.total_size, totalBytes);
    assert.equal(totalBytes, tensors.reduce((a, t) => a + t.data.length * 4, 0));
    assert.deepEqual(Object.keys(index.weight_map), layout.map((s) => s.name).sort());

    const source = await openSafetensorsIndex(`${dir}/model.safetensors.index.json`);
    try {
      assert.deepEqual([...source.tensors.keys()], layout.map((s) => s.name).sort());
      for (const t of tensors) {
        assert.deepEqual(source.tensors.get(t.name), { dtype: "F32", shape: t.shape });
        assert.deepEqual(bitsOf(await source.read(t.name)), bitsOf(t.data), t.name);
      }
    } finally {
      source.close();
    }
  });
});

Deno.test("sharded: a model that fits one shard is written as model.safetensors", async () => {
  await withTempDir(async (dir) => {
    const tensors = [randomTensor("a", [4], 1), randomTensor("b", [4], 2)];
    const { files } = await writeShardedSafetensors(dir, tensors, { dtype: "BF16" });
    assert.deepEqual(files, ["model.safetensors"]);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["model.safetensors"]);
  });
});

Deno.test("sharded: a bad index is a one-line UserError naming it", async () => {
  await withTempDir(async (dir) => {
    const tensors = [
      randomTensor("a", [32], 1),
      randomTensor("b", [32], 2),
      randomTensor("c", [64], 3),
    ];
    await writeShardedSafetensors(dir, tensors, { maxShardBytes: 256 });
    const indexPath = `${dir}/model.safetensors.index.json`;
    const good = JSON.parse(await Deno.readTextFile(indexPath));
    const first = good.weight_map.a;
    const second = good.weight_map.c;
    assert.equal(good.weight_map.b, first);
    assert.notEqual(first, second);
    const bad: [string, string, string][] = [
      ["not json", "{", "not valid JSON"],
      ["no map", JSON.stringify({ metadata: {} }), '"weight_map" is missing'],
      ["empty map", JSON.stringify({ weight_map: {} }), "empty"],
      [
        "wrong shard",
        JSON.stringify({ weight_map: { a: second, b: first, c: second } }),
        `puts tensor "a" in ${second}`,
      ],
      [
        "unmapped",
        JSON.stringify({ weight_map: { a: first, c: second } }),
        `${first} holds tensor "b"`,
      ],
      [
        "escape",
        JSON.stringify({ weight_map: { a: "../x.safetensors" } }),
        "not a file in this directory",
      ],
      [
        "missing shard",
        JSON.stringify({ weight_map: { a: "gone.safetensors" } }),
        "gone.safetensors",
      ],
    ];
    for (const [what, text, fault] of bad) {
      const path = `${dir}/bad.index.json`;
      await Deno.writeTextFile(path, text);
      const message = await assertUserError(() => openSafetensorsIndex(path), fault);
      assert.ok(message.includes(dir), `${what}: ${message}`);
    }
    await assertUserError(() => openSafetensorsIndex(`${dir}/nope.json`), "does not exist");
  });
});
