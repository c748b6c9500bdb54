// Sizes and waits that used to crash or hang (issue 13, item 5), each now one line and exit 2
// before anything is allocated or written: a config.json with 1e9 layers (V8 ran out of memory
// after 75 s), a model larger than this machine, a population of 1e9 (no YAML place), a corpus
// at /dev/zero (memory without bound) or a FIFO (a hang), a corpus past its size cap, binary or
// not UTF-8, and a Redis endpoint that accepts TCP and never answers (the worker and the
// coordinator hung silently).
import { assert, tempDir } from "./helpers.ts";
import { cli, exists, oneLine, train, writeSmoke } from "./reliability_helpers.ts";
import { getPreset } from "../model/presets.ts";
import { qwen3ConfigToJson } from "../model/config.ts";

/** Runs `fn` and asserts it took less than `ms` (a bound against a hang, far above the need). */
async function within<T>(ms: number, what: string, fn: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  const v = await fn();
  const took = performance.now() - t0;
  assert(took < ms, `${what} took ${Math.round(took)} ms; it must fail fast, not hang or grow`);
  return v;
}

Deno.test("config.json with num_hidden_layers 1e9, or a model larger than this machine: one line", async () => {
  const dir = await tempDir();
  const base = qwen3ConfigToJson(getPreset("micro"));
  await Deno.writeTextFile(
    `${dir}/layers.json`,
    JSON.stringify({ ...base, num_hidden_layers: 1e9 }),
  );
  let file = await writeSmoke(dir, { model: [`config: ${dir}/layers.json`] }, "layers.yaml");
  let r = await within(60_000, "1e9 layers", () => train([file, "--out", `${dir}/a`]));
  oneLine(r, { says: [`${dir}/layers.json`, "num_hidden_layers", "1000000000", "at most 4096"] });
  assert(!(await exists(`${dir}/a`)), "nothing written");

  // Within every bound of the format, but terabytes of weights: refused against this machine.
  const huge = { ...base, hidden_size: 16384, intermediate_size: 65536, num_hidden_layers: 512 };
  await Deno.writeTextFile(`${dir}/huge.json`, JSON.stringify(huge));
  file = await writeSmoke(dir, { model: [`config: ${dir}/huge.json`] }, "huge.yaml");
  r = await within(
    60_000,
    "a model larger than the machine",
    () => train([file, "--out", `${dir}/b`]),
  );
  oneLine(r, { says: [`${file}:`, "model:", "this machine has", "use a smaller model"] });
  assert(!(await exists(`${dir}/b`)), "nothing written");
});

Deno.test("population 1e9: one line at perturb.population's file:line:col with the fix, both backends", async () => {
  const dir = await tempDir();
  const file = await writeSmoke(dir, { population: 1000000000 });
  const line = (await Deno.readTextFile(file)).split("\n").findIndex((l) => /population:/.test(l)) +
    1;
  for (const backend of ["cpu", "webgpu"]) {
    const r = await within(60_000, `population 1e9 on ${backend}`, () =>
      cli([
        "tools/train.ts",
        file,
        "--out",
        `${dir}/${backend}`,
        "--backend",
        backend,
        "--no-status",
      ]));
    oneLine(r, { says: [`${file}:${line}:15: perturb.population`, "use a smaller population"] });
    assert(!(await exists(`${dir}/${backend}`)), "nothing written");
  }
});

Deno.test("a corpus that is /dev/zero or a FIFO is refused at once; opted in, /dev/zero is binary", async () => {
  const dir = await tempDir();
  let file = await writeSmoke(dir, { corpus: "/dev/zero" }, "zero.yaml");
  let r = await within(30_000, "/dev/zero", () => train([file, "--out", `${dir}/a`]));
  oneLine(r, { says: [`${file}:6:9: dataset.path`, "not a regular file", "allow_special_file"] });
  file = await writeSmoke(
    dir,
    { corpus: "/dev/zero", datasetExtra: ["allow_special_file: true"] },
    "z2.yaml",
  );
  r = await within(30_000, "/dev/zero, opted in", () => train([file, "--out", `${dir}/a`]));
  oneLine(r, { says: ["holds binary data (a NUL byte at byte 0)"] });

  const fifo = `${dir}/fifo`;
  const made = await new Deno.Command("mkfifo", { args: [fifo] }).output();
  assert(made.success, "mkfifo");
  file = await writeSmoke(dir, { corpus: fifo }, "fifo.yaml");
  r = await within(30_000, "a FIFO", () => train([file, "--out", `${dir}/b`]));
  oneLine(r, { says: [fifo, "not a regular file"] });
  assert(!(await exists(`${dir}/a`)) && !(await exists(`${dir}/b`)), "nothing written");
});

Deno.test("a corpus past dataset.max_bytes, a binary file, or one not UTF-8: one line at dataset.path", async () => {
  const dir = await tempDir();
  const cases: [string, Uint8Array, string[], string][] = [
    // One long line and no newline: the cap stops the read before max_lines samples are in.
    [
      "long.txt",
      new TextEncoder().encode("x".repeat(5000)),
      ["max_bytes: 1000"],
      "larger than dataset.max_bytes",
    ],
    [
      "bin.dat",
      new Uint8Array([104, 105, 10, 0, 1, 2, 10]),
      [],
      "binary data (a NUL byte at byte 3)",
    ],
    [
      "latin1.txt",
      new Uint8Array(Array.from({ length: 400 }, (_, i) => i % 20 === 19 ? 10 : 0xe9)),
      [],
      "is not UTF-8 text",
    ],
  ];
  for (const [name, data, extra, says] of cases) {
    await Deno.writeFile(`${dir}/${name}`, data);
    const file = await writeSmoke(
      dir,
      { corpus: `${dir}/${name}`, datasetExtra: extra },
      `${name}.yaml`,
    );
    const r = await train([file, "--out", `${dir}/out`]);
    oneLine(r, { says: [`${file}:6:9: dataset.path`, says] });
  }
  assert(!(await exists(`${dir}/out`)), "nothing written");
});

/**
 * A TCP server on 127.0.0.1 that accepts and reads, and answers the first `answer` commands
 * with +OK (PING with +PONG) before it goes silent for good.
 */
function silentRedis(answer = 0): { url: string; close(): void } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Deno.Conn[] = [];
  (async () => {
    for await (const conn of listener) {
      conns.push(conn);
      (async () => {
        let left = answer;
        const buf = new Uint8Array(4096);
        try {
          for (;;) {
            const n = await conn.read(buf);
            if (n === null) return;
            const text = new TextDecoder().decode(buf.subarray(0, n));
            // One reply per command (each is a RESP array "*N").
            for (const cmd of text.split(/^\*/m).filter((c) => c.trim())) {
              if (left <= 0) break;
              left--;
              await conn.write(
                new TextEncoder().encode(/PING/i.test(cmd) ? "+PONG\r\n" : "+OK\r\n"),
              );
            }
          }
        } catch { /* closed */ }
      })();
    }
  })().catch(() => {});
  const port = (listener.addr as Deno.NetAddr).port;
  return {
    url: `redis://127.0.0.1:${port}`,
    close: () => {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
    },
  };
}

Deno.test("Redis that accepts TCP and never answers: worker and coordinator exit 2 naming the URL", async () => {
  const dir = await tempDir();
  const file = await writeSmoke(dir);
  const env = { ESFLOW_REDIS_TIMEOUT_MS: "1500" };
  const silent = silentRedis();
  try {
    let r = await within(
      30_000,
      "the worker",
      () => cli(["tools/worker.ts", "--redis", silent.url, "--backend", "cpu"], env),
    );
    oneLine(r, { says: [`redis at ${silent.url}`, "no reply", "within 1.5 s"] });
    r = await within(
      30_000,
      "the coordinator",
      () => train([file, "--out", `${dir}/run`, "--redis", silent.url], env),
    );
    oneLine(r, { says: [`redis at ${silent.url}`, "no reply"] });
    assert(!(await exists(`${dir}/run`)), "nothing written");
  } finally {
    silent.close();
  }
  // Answers the handshake, then stops: a command times out the same way.
  const stalls = silentRedis(8);
  try {
    const r = await within(
      30_000,
      "a worker whose Redis stalls",
      () => cli(["tools/worker.ts", "--redis", stalls.url, "--backend", "cpu"], env),
    );
    oneLine(r, { says: [`redis at ${stalls.url}`, "no reply to"] });
  } finally {
    stalls.close();
  }
});
