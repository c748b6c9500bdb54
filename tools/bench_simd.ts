/**
 * `deno run -A tools/bench_simd.ts [--rows N] [--dim D]`: the CPU backend's native C against
 * WebAssembly SIMD on one kernel, measured in the same run, so the choice of C for
 * kernels/cpu/esflow.c rests on a number of this machine's.
 *
 * The kernel is RMSNorm, y = w · (x · 1/sqrt(mean(x²) + ε)) per row (a read of x, a write of y):
 * esflow.c's esf_rmsnorm at one thread and at every thread, and the same function written
 * directly in WebAssembly with 128-bit f32x4 lanes (the widest WebAssembly has; one thread, as a
 * module runs on the thread that calls it). The module is assembled here from its opcodes
 * ({@link rmsnormWasm}); both outputs are checked against a float64 reference before anything
 * is timed. Each side keeps its best of three batches of `repeats` calls, the sides in turn.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { loadNative } from "../kernels/cpu/native.ts";
import { runMain } from "./cli.ts";
import { UserError } from "../errors.ts";

/** unsigned LEB128. */
function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n) b |= 0x80;
    out.push(b);
  } while (n);
  return out;
}

/** signed LEB128 of a small non-negative i32 constant. */
function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) {
      out.push(b);
      return out;
    }
    out.push(b | 0x80);
  }
}

const str = (s: string) => [...uleb(s.length), ...new TextEncoder().encode(s)];
const section = (id: number, body: number[]) => [id, ...uleb(body.length), ...body];
const vec = (items: number[][]) => [...uleb(items.length), ...items.flat()];

/**
 * A WebAssembly module exporting `rms(x, w, y, rows, dim, eps)` over an imported memory
 * `env.mem` (byte offsets; dim a multiple of 4): per row, Σx² in four f32x4 lanes, then
 * y = w · (x · inv) four lanes at a time, the order of esf_rmsnorm's products.
 */
export function rmsnormWasm(): Uint8Array<ArrayBuffer> {
  // Locals: params 0 x, 1 w, 2 y, 3 rows, 4 dim, 5 eps; 6 r, 7 k, 8 row offset, 9 acc, 10 v,
  // 11 inv, 12 inv splat.
  const get = (i: number) => [0x20, i],
    set = (i: number) => [0x21, i],
    tee = (i: number) => [0x22, i];
  const i32 = (n: number) => [0x41, ...sleb(n)];
  const simd = (op: number, ...rest: number[]) => [0xfd, ...uleb(op), ...rest];
  const load = simd(0x00, 0, 0), store = simd(0x0b, 0, 0);
  const f4add = simd(0xe4), f4mul = simd(0xe6), lane = (l: number) => simd(0x1f, l);
  const [ADD, SHL, GEU, MUL] = [0x6a, 0x74, 0x4f, 0x6c];
  // x + row offset + k·4 (and likewise for y): the byte address of element k of the row.
  const at = (base: number) => [...get(base), ...get(8), ADD, ...get(7), ...i32(2), SHL, ADD];
  const loopOverK = (body: number[]) => [
    ...i32(0),
    ...set(7),
    0x02,
    0x40,
    0x03,
    0x40,
    ...get(7),
    ...get(4),
    GEU,
    0x0d,
    1,
    ...body,
    ...get(7),
    ...i32(4),
    ADD,
    ...set(7),
    0x0c,
    0,
    0x0b,
    0x0b,
  ];
  const f32one = [0x43, ...new Uint8Array(new Float32Array([1]).buffer)];
  const code = [
    ...i32(0),
    ...set(6),
    0x02,
    0x40,
    0x03,
    0x40,
    ...get(6),
    ...get(3),
    GEU,
    0x0d,
    1,
    ...get(6),
    ...get(4),
    MUL,
    ...i32(2),
    SHL,
    ...set(8),
    ...simd(0x0c, ...new Array(16).fill(0)),
    ...set(9),
    ...loopOverK([
      ...at(0),
      ...load,
      ...tee(10),
      ...get(10),
      ...f4mul,
      ...get(9),
      ...f4add,
      ...set(9),
    ]),
    ...f32one,
    ...get(9),
    ...lane(0),
    ...get(9),
    ...lane(1),
    0x92,
    ...get(9),
    ...lane(2),
    0x92,
    ...get(9),
    ...lane(3),
    0x92,
    ...get(4),
    0xb3,
    0x95,
    ...get(5),
    0x92,
    0x91,
    0x95,
    ...set(11),
    ...get(11),
    ...simd(0x13),
    ...set(12),
    ...loopOverK([
      ...at(2),
      ...get(1),
      ...get(7),
      ...i32(2),
      SHL,
      ADD,
      ...load,
      ...at(0),
      ...load,
      ...get(12),
      ...f4mul,
      ...f4mul,
      ...store,
    ]),
    ...get(6),
    ...i32(1),
    ADD,
    ...set(6),
    0x0c,
    0,
    0x0b,
    0x0b,
    0x0b,
  ];
  const locals = vec([[3, 0x7f], [2, 0x7b], [1, 0x7d], [1, 0x7b]]);
  const body = [...locals, ...code];
  return new Uint8Array([
    0x00,
    0x61,
    0x73,
    0x6d,
    0x01,
    0x00,
    0x00,
    0x00,
    ...section(1, vec([[0x60, ...vec([[0x7f], [0x7f], [0x7f], [0x7f], [0x7f], [0x7d]]), 0]])),
    ...section(2, vec([[...str("env"), ...str("mem"), 0x02, 0x00, ...uleb(1)]])),
    ...section(3, vec([[0]])),
    ...section(7, vec([[...str("rms"), 0x00, 0]])),
    ...section(10, vec([[...uleb(body.length), ...body]])),
  ]);
}

/** RMSNorm of (rows, dim) in float64, the check both sides must pass. */
function reference(x: Float32Array, w: Float32Array, rows: number, dim: number, eps: number) {
  const y = new Float64Array(rows * dim);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let i = 0; i < dim; i++) s += x[r * dim + i] ** 2;
    const inv = 1 / Math.sqrt(s / dim + eps);
    for (let i = 0; i < dim; i++) y[r * dim + i] = w[i] * x[r * dim + i] * inv;
  }
  return y;
}

function maxRelError(a: Float32Array, b: Float64Array): number {
  let e = 0;
  for (let i = 0; i < b.length; i++) {
    e = Math.max(e, Math.abs(a[i] - b[i]) / (Math.abs(b[i]) + 1e-6));
  }
  return e;
}

/** Best seconds per call over three batches of `repeats`. */
function best(repeats: number, f: () => void): number {
  f();
  let t = Infinity;
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now();
    for (let r = 0; r < repeats; r++) f();
    t = Math.min(t, (performance.now() - t0) / 1000 / repeats);
  }
  return t;
}

if (import.meta.main) {
  await runMain("bench_simd", async () => {
    const { values } = parseArgs({
      args: Deno.args,
      options: {
        rows: { type: "string", default: "4096" },
        dim: { type: "string", default: "1024" },
      },
    });
    const rows = Number(values.rows), dim = Number(values.dim), eps = 1e-6;
    if (!Number.isInteger(rows) || rows < 1 || !Number.isInteger(dim) || dim < 4 || dim % 4) {
      throw new UserError("--rows must be a positive integer and --dim a multiple of 4");
    }
    const native = await loadNative();
    const threads = native.threads;
    const n = rows * dim;
    const x = Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37) * 2 + 0.1);
    const w = Float32Array.from({ length: dim }, (_, i) => 1 + Math.cos(i) * 0.5);
    const want = reference(x, w, rows, dim, eps);

    const yc = new Float32Array(n);
    const c = () => native.rmsnorm({ x, w, y: yc, rows, dim, eps });
    c();
    const cErr = maxRelError(yc, want);

    const bytes = (2 * n + dim) * 4;
    const memory = new WebAssembly.Memory({ initial: Math.ceil(bytes / 65536) + 1 });
    const module = await WebAssembly.compile(rmsnormWasm());
    const instance = await WebAssembly.instantiate(module, { env: { mem: memory } });
    const rms = instance.exports.rms as (...a: number[]) => void;
    const heap = new Float32Array(memory.buffer);
    const X = 0, W = n * 4, Y = (n + dim) * 4;
    heap.set(x, X / 4);
    heap.set(w, W / 4);
    const wasm = () => rms(X, W, Y, rows, dim, eps);
    wasm();
    const wErr = maxRelError(heap.subarray(Y / 4, Y / 4 + n), want);
    if (cErr > 1e-5 || wErr > 1e-5) {
      throw new Error(`rmsnorm disagrees with the float64 reference: C ${cErr}, wasm ${wErr}`);
    }

    const repeats = 20;
    const results: Record<string, number> = { c_all: Infinity, c_1: Infinity, wasm: Infinity };
    for (let round = 0; round < 2; round++) {
      native.setThreads(threads);
      results.c_all = Math.min(results.c_all, best(repeats, c));
      native.setThreads(1);
      results.c_1 = Math.min(results.c_1, best(repeats, c));
      native.setThreads(threads);
      results.wasm = Math.min(results.wasm, best(repeats, wasm));
    }
    const cpu = (await Deno.readTextFile("/proc/cpuinfo").catch(() => "")).match(
      /model name\s*:\s*(.*)/,
    )?.[1] ?? Deno.build.arch;
    const gbs = (s: number) => (bytes / s / 1e9).toFixed(1);
    console.log(
      `RMSNorm ${rows}×${dim} f32 on ${cpu}, ${threads} threads; GB/s of x read + y written`,
    );
    console.log(`| implementation | ms per call | GB/s | max rel error vs float64 |`);
    console.log(`|---|---|---|---|`);
    console.log(
      `| C (esflow.c), ${threads} threads | ${(results.c_all * 1e3).toFixed(2)} | ${
        gbs(results.c_all)
      } | ${cErr.toExponential(1)} |`,
    );
    console.log(
      `| C (esflow.c), 1 thread | ${(results.c_1 * 1e3).toFixed(2)} | ${gbs(results.c_1)} | ${
        cErr.toExponential(1)
      } |`,
    );
    console.log(
      `| WebAssembly SIMD (f32x4), 1 thread | ${(results.wasm * 1e3).toFixed(2)} | ${
        gbs(results.wasm)
      } | ${wErr.toExponential(1)} |`,
    );
    console.log(
      `C at 1 thread / WebAssembly: ${
        (results.wasm / results.c_1).toFixed(2)
      }×; C at ${threads} threads / WebAssembly: ${(results.wasm / results.c_all).toFixed(2)}×`,
    );
  });
}
