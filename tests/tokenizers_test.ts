// Tokenizers: the byte tokenizer, the real Qwen3 vocabulary, and hand-written tokenizer.json files.
// node:assert, not jsr:@std/assert: the build machine reaches only the npm registry.
import assert from "node:assert/strict";
import { UserError } from "../errors.ts";
import {
  createBytesTokenizer,
  hfTokenizerFromJson,
  loadTokenizer,
  QWEN3_MODEL_VOCAB_SIZE,
  QWEN3_PAD_ID,
  QWEN3_TOKEN_COUNT,
  qwen3TokenizerPath,
  type Tokenizer,
} from "../tokenizers/mod.ts";
import { tempDir } from "./helpers.ts";

const SAMPLES = [
  "Hello world",
  "It is a truth universally acknowledged, that a single man in possession of a good fortune,",
  "naïve café — Ærøskøbing, Straße",
  "日本語のテキスト 中文 한국어",
  "emoji 🙂👍🏽 family 👨‍👩‍👧 flag 🇯🇵",
  "tabs\tand\n\nnewlines  \r\n  trailing ",
  "",
];

Deno.test("bytes: ids are the UTF-8 bytes and decode round-trips", () => {
  const tok = createBytesTokenizer();
  assert.equal(tok.vocabSize, 256);
  assert.equal(tok.padId, 0);
  assert.deepEqual(tok.encode("Hi!"), [72, 105, 33]);
  assert.deepEqual(tok.encode("é"), [0xc3, 0xa9]);
  assert.deepEqual(tok.encode("🙂"), [0xf0, 0x9f, 0x99, 0x82]);
  for (const text of [...SAMPLES, "\u0000nul", "\uFEFFbom first"]) {
    const ids = tok.encode(text);
    assert.ok(ids.every((id) => Number.isInteger(id) && id >= 0 && id < 256));
    assert.equal(tok.decode(ids), text);
  }
});

Deno.test("bytes: a cut multi-byte character decodes to U+FFFD, a bad id throws", () => {
  const tok = createBytesTokenizer();
  assert.equal(tok.decode([0xf0, 0x9f]), "\uFFFD");
  assert.throws(() => tok.decode([256]), RangeError);
  assert.throws(() => tok.decode([-1]), RangeError);
});

Deno.test("loadTokenizer('bytes') is the byte tokenizer", async () => {
  const tok = await loadTokenizer("bytes");
  assert.equal(tok.name, "bytes");
  assert.equal(tok.decode(tok.encode("ok 🙂")), "ok 🙂");
});

// One load shared by the Qwen3 tests: parsing the 11 MB tokenizer.json takes about half a second.
let qwen3: Promise<Tokenizer> | undefined;
const loadQwen3 = () => qwen3 ??= loadTokenizer("qwen3");

/** The vocab map and added tokens read straight from the shipped file, bypassing the library. */
async function readQwen3Json(): Promise<{
  vocab: Record<string, number>;
  added: { id: number; content: string }[];
}> {
  const json = JSON.parse(await Deno.readTextFile(qwen3TokenizerPath()));
  return { vocab: json.model.vocab, added: json.added_tokens };
}

Deno.test("qwen3: size and special ids", async () => {
  const tok = await loadQwen3();
  assert.equal(tok.name, "qwen3");
  assert.equal(tok.vocabSize, QWEN3_TOKEN_COUNT);
  assert.ok(tok.vocabSize >= 151_669 && tok.vocabSize <= QWEN3_MODEL_VOCAB_SIZE);
  assert.equal(QWEN3_MODEL_VOCAB_SIZE % 128, 0);
  assert.equal(tok.padId, QWEN3_PAD_ID);
  assert.equal(tok.decode([tok.padId]), "<|endoftext|>");
  assert.equal(tok.bosId, undefined);
  assert.equal(tok.eosId, 151_645);
  assert.equal(tok.decode([tok.eosId!]), "<|im_end|>");
});

Deno.test("qwen3: 'Hello world' is the vocab's 'Hello' and 'Ġworld'", async () => {
  const tok = await loadQwen3();
  const { vocab, added } = await readQwen3Json();
  // The independent check: ids looked up in the file's own map ("Ġ" is GPT-2's byte for space).
  assert.equal(vocab["Hello"], 9707);
  assert.equal(vocab["Ġworld"], 1879);
  assert.deepEqual(tok.encode("Hello world"), [vocab["Hello"], vocab["Ġworld"]]);
  assert.deepEqual(tok.encode("Hello"), [9707]);
  assert.deepEqual(tok.encode(" world"), [1879]);
  // 151,643 BPE tokens plus 26 added ones fill 0..151,668 with no gap.
  const ids = new Set([...Object.values(vocab), ...added.map((t) => t.id)]);
  assert.equal(ids.size, QWEN3_TOKEN_COUNT);
  assert.equal([...ids].reduce((a, b) => Math.max(a, b)) + 1, QWEN3_TOKEN_COUNT);
  assert.equal(added.find((t) => t.content === "<|endoftext|>")?.id, QWEN3_PAD_ID);
});

Deno.test("qwen3: encode adds no special tokens and decode round-trips", async () => {
  const tok = await loadQwen3();
  for (const text of SAMPLES) {
    const ids = tok.encode(text);
    assert.ok(ids.every((id) => Number.isInteger(id) && id >= 0 && id < tok.vocabSize), text);
    assert.ok(!ids.includes(tok.padId) && !ids.includes(tok.eosId!), text);
    assert.equal(tok.decode(ids), text);
  }
  assert.deepEqual(tok.encode(""), []);
  // BPE merges: a long common word is one token, far fewer tokens than bytes.
  const prose = SAMPLES[1];
  assert.ok(tok.encode(prose).length < new TextEncoder().encode(prose).length / 3);
});

Deno.test("qwen3: single-token decodes of ASCII text concatenate back", async () => {
  const tok = await loadQwen3();
  const text = "It is a truth universally acknowledged, said Mr. Bennet in 1813.";
  const ids = tok.encode(text);
  assert.equal(ids.map((id) => tok.decode([id])).join(""), text);
  assert.throws(() => tok.decode([tok.vocabSize]), RangeError);
});

/** A tiny BPE tokenizer.json: "a","b","c" merge to "ab" then "abc"; "<eos>" is an added token. */
const TINY_BPE = {
  version: "1.0",
  added_tokens: [
    {
      id: 7,
      content: "<eos>",
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    },
  ],
  normalizer: null,
  pre_tokenizer: { type: "WhitespaceSplit" },
  post_processor: null,
  decoder: null,
  model: {
    type: "BPE",
    unk_token: "<unk>",
    vocab: { "<pad>": 0, "<unk>": 1, "a": 2, "b": 3, "c": 4, "ab": 5, "abc": 6 },
    merges: ["a b", "ab c"],
  },
};

async function withTempDir(body: (dir: string) => Promise<void>): Promise<void> {
  const dir = await tempDir("esflow_tokenizers_");
  try {
    await body(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("hf: a tiny BPE tokenizer.json loads from its path or its directory", async () => {
  await withTempDir(async (dir) => {
    const file = `${dir}/tokenizer.json`;
    await Deno.writeTextFile(file, JSON.stringify(TINY_BPE));
    for (const spec of [file, dir]) {
      const tok = await loadTokenizer(spec);
      assert.equal(tok.name, file);
      assert.equal(tok.vocabSize, 8); // the added "<eos>" (id 7) counts
      assert.deepEqual(tok.encode("abc ab c ba"), [6, 5, 4, 3, 2]);
      assert.deepEqual(tok.encode("abc<eos>"), [6, 7]);
      assert.deepEqual(tok.encode("x"), [1]);
      assert.equal(tok.decode([6, 5, 4]), "abc ab c"); // no decoder: tokens joined by spaces
      assert.equal(tok.decode([]), "");
      // No tokenizer_config.json: no pad token is named, so pad falls back to 0.
      assert.equal(tok.padId, 0);
      assert.equal(tok.eosId, undefined);
    }
  });
});

Deno.test("hf: tokenizer_config.json beside it names pad, bos and eos", async () => {
  await withTempDir(async (dir) => {
    const { post_processor: _, decoder: __, ...bare } = TINY_BPE; // the optional keys may be absent
    await Deno.writeTextFile(`${dir}/tokenizer.json`, JSON.stringify(bare));
    await Deno.writeTextFile(
      `${dir}/tokenizer_config.json`,
      JSON.stringify({ pad_token: "<pad>", bos_token: { content: "a" }, eos_token: "<eos>" }),
    );
    const tok = await loadTokenizer(dir);
    assert.equal(tok.padId, 0);
    assert.equal(tok.bosId, 2);
    assert.equal(tok.eosId, 7);
    assert.deepEqual(tok.encode("ab"), [5]);
  });
});

Deno.test("hf: a WordLevel tokenizer.json maps whole words, unknown ones to its unk_token", async () => {
  await withTempDir(async (dir) => {
    const wordLevel = {
      model: {
        type: "WordLevel",
        vocab: { "[UNK]": 0, "[PAD]": 1, "hello": 2, "world": 3, "!": 4 },
        unk_token: "[UNK]",
      },
      pre_tokenizer: { type: "Whitespace" },
    };
    await Deno.writeTextFile(`${dir}/tokenizer.json`, JSON.stringify(wordLevel));
    await Deno.writeTextFile(
      `${dir}/tokenizer_config.json`,
      JSON.stringify({ pad_token: "[PAD]" }),
    );
    const tok = await loadTokenizer(dir);
    assert.equal(tok.vocabSize, 5);
    assert.equal(tok.padId, 1);
    assert.deepEqual(tok.encode("hello world!"), [2, 3, 4]);
    assert.deepEqual(tok.encode("hello mars"), [2, 0]);
    assert.equal(tok.decode([2, 3]), "hello world");
  });
});

Deno.test("hf: a bad path or a bad file is a one-line UserError", async () => {
  await withTempDir(async (dir) => {
    const cases: [string, string | null, RegExp][] = [
      [`${dir}/missing.json`, null, /no such file/],
      [dir, null, /directory has no tokenizer\.json/],
      [`${dir}/broken.json`, '{"model": {"type": "BPE",', /invalid JSON/],
      [`${dir}/array.json`, "[1, 2]", /not an object/],
      [`${dir}/nomodel.json`, '{"added_tokens": []}', /no "model" object/],
      [`${dir}/odd.json`, '{"model": {"type": "Martian"}}', /cannot build/],
    ];
    for (const [path, text, pattern] of cases) {
      if (text !== null) await Deno.writeTextFile(path, text);
      const err = await loadTokenizer(path).then(() => undefined, (e: unknown) => e);
      assert.ok(err instanceof UserError, `${path}: ${err}`);
      assert.match(err.message, pattern);
      assert.ok(err.message.includes(path.endsWith(".json") ? path : dir), err.message);
      assert.ok(!err.message.includes("\n"), err.message);
      assert.match(err.message, /fix: /);
      if (text !== null) await Deno.remove(path);
    }
  });
});

Deno.test("hf: a broken tokenizer_config.json is a UserError too", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/tokenizer.json`, JSON.stringify(TINY_BPE));
    await Deno.writeTextFile(`${dir}/tokenizer_config.json`, "{pad_token: <pad>}");
    await assert.rejects(loadTokenizer(dir), (err: unknown) => {
      assert.ok(err instanceof UserError);
      assert.match(err.message, /tokenizer_config\.json: invalid JSON/);
      return true;
    });
  });
});

// ---- tokenizers as files beside a model (tokenizers/pretrained.ts) -------------------------

Deno.test("pretrained: the byte tokenizer's tokenizer.json gives the UTF-8 bytes through HF tokenizers", async () => {
  const { bytesTokenizerJson } = await import("../tokenizers/pretrained.ts");
  const hf = hfTokenizerFromJson(bytesTokenizerJson(), { config: { pad_token: "Ā" } });
  const bytes = createBytesTokenizer();
  assert.equal(hf.vocabSize, 256);
  assert.equal(hf.padId, 0);
  for (
    const text of [
      "It is a truth universally acknowledged, that a single man",
      "héllo wörld ✓ 日本\n\ttab  two  spaces ",
      "\u0000 nul, 😀, and \r\n line ends",
      "",
    ]
  ) {
    assert.deepEqual(hf.encode(text), bytes.encode(text), JSON.stringify(text));
    assert.equal(hf.decode(hf.encode(text)), text);
  }
});

Deno.test("pretrained: a model dir's tokenizer files are read back as the tokenizer that wrote them", async () => {
  const { checkpointTokenizerFiles, tokenizerIdentity, tokenizerOfCheckpoint } = await import(
    "../tokenizers/pretrained.ts"
  );
  const dir = await tempDir();
  try {
    for (const name of ["bytes", "qwen3"]) {
      const tok = await loadTokenizer(name);
      const files = await checkpointTokenizerFiles(tok);
      assert.deepEqual(
        Object.keys(files).sort(),
        ["generation_config.json", "tokenizer.json", "tokenizer_config.json"],
      );
      await Deno.mkdir(`${dir}/${name}`);
      for (const [f, content] of Object.entries(files)) {
        if (typeof content === "string") await Deno.writeTextFile(`${dir}/${name}/${f}`, content);
        else await Deno.writeFile(`${dir}/${name}/${f}`, content);
      }
      const back = await tokenizerOfCheckpoint(`${dir}/${name}`);
      assert.ok(back, name);
      assert.equal(back.identity, await tokenizerIdentity(tok), `${name}: the same tokenizer.json`);
      const text = "Mr. Darcy bowed — “How do you do?”";
      assert.deepEqual(back.tokenizer.encode(text), tok.encode(text), name);
      assert.equal(back.tokenizer.padId, tok.padId);
      assert.equal(back.tokenizer.eosId, tok.eosId);
      const gen = JSON.parse(files["generation_config.json"] as string);
      assert.deepEqual(
        gen,
        name === "qwen3" ? { eos_token_id: 151645, pad_token_id: 151643 } : { pad_token_id: 0 },
        `${name} generation_config.json`,
      );
    }
    // bytes is read back as the built-in tokenizer; qwen3's files are the package's, byte for byte.
    assert.equal((await tokenizerOfCheckpoint(`${dir}/bytes`))!.tokenizer.name, "bytes");
    assert.deepEqual(
      await Deno.readFile(`${dir}/qwen3/tokenizer.json`),
      await Deno.readFile(qwen3TokenizerPath()),
    );
    // A dir without tokenizer.json carries none.
    assert.equal(await tokenizerOfCheckpoint(dir), null);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
