/**
 * The CPU backend's native kernels: kernels/cpu/esflow.c compiled with the system C compiler,
 * loaded with Deno.dlopen, with the system BLAS loaded into it, and one typed method per C
 * function. Each C function computes what its WGSL kernel (kernels/*.wgsl) computes; see the
 * comment above it in esflow.c for the shapes and the legend at the top of that file.
 *
 * Build. The library is compiled once per (source text, flags, compiler version, CPU model and
 * flags, OS/arch) into `${XDG_CACHE_HOME or ~/.cache}/esflow/native/<sha256>/`, written under a
 * temporary name and renamed, so test files running in parallel never load a half-written file;
 * a cached library is reused without recompiling. Flags: -O3 -march=native -fPIC -shared
 * -fopenmp -ffp-contract=off -lm -ldl. -ffp-contract=off keeps a·b + c two roundings as
 * written (GCC fuses them into FMAs by default), so the AVX2 kernels, their scalar tails and a
 * build for another CPU give the same bits. Without OpenMP support (Apple clang) the kernels
 * build and run single-threaded; {@link Native.openmp} says which.
 *
 * BLAS. The C side dlopens the first that loads of: $ESFLOW_BLAS (a path, to choose another),
 * Debian's /usr/lib/<multiarch>/openblas-pthread/libopenblas.so.0, libopenblas.so.0 on the
 * loader path, libblas.so.3 (Debian's alternative: OpenBLAS once libopenblas0-pthread is
 * installed, otherwise the slow reference BLAS); on macOS Accelerate. {@link Native.blas}
 * names the file and its version.
 *
 * Threads. Every kernel runs on one OpenMP pool of {@link Native.threads} threads, matmuls
 * included: they cut out into fixed tiles, each one single-threaded sgemm, because OpenBLAS's
 * own threading changes the result bits with its thread count. So results never depend on the
 * thread count. Unless already set, this module sets {@link SPIN_SETTINGS} in the environment
 * before the libraries load; see its doc comment for the measurement.
 *
 * Memory safety: every method checks that each array holds what the kernel touches and throws
 * an Error naming the kernel and the shortfall; the C code checks nothing. {@link Native.symbols}
 * are the raw, unchecked entry points.
 *
 * Tests: tests/native_test.ts (every kernel against a float64 reference on ragged shapes).
 *
 * @module
 */
import { UserError } from "../../errors.ts";
import { type Seed, seedKey } from "../philox.ts";
import { cDefines } from "../records.ts";

const SOURCE = new URL("./esflow.c", import.meta.url);

const NO_COMPILER =
  "the CPU backend compiles kernels/cpu/esflow.c and needs a C compiler: apt-get install -y " +
  "build-essential (macOS: xcode-select --install)";
const NO_BLAS =
  "the CPU backend needs a BLAS: apt-get install -y libopenblas0-pthread (macOS: Accelerate " +
  "ships with the system)";

/**
 * Thread-pool settings applied before the libraries load, each only when the variable is not
 * already set. The matmuls call the BLAS single-threaded from our OpenMP threads (see
 * esf_matmul in esflow.c), so normally one pool runs everything and nothing oversubscribes.
 * Only {@link Native.sgemmNt} runs OpenBLAS's own threads, and there the two pools collide:
 * each pool's workers keep spinning after a call (OpenBLAS for 2^28 cycles, libgomp for 300k
 * spins) while the other pool works. Measured on 2 Zen 3 cores (a shared VM: noisy), 2 threads,
 * alternating a 512³ sgemm with a 1M-element perturb, time against the two alone (medians of
 * two runs of 3–4 interleaved rounds):
 *   defaults                                 esf_sgemm_nt ×1.60, ×1.76
 *   OPENBLAS_THREAD_TIMEOUT=4 only           ×1.42, ×1.31
 *   OMP_WAIT_POLICY=passive + timeout 4      ×1.03, ×0.81, but every OpenMP kernel then pays
 *                                            ~20 µs to wake its workers (rmsnorm 256²: 30–36 µs,
 *                                            not 11–13)
 *   GOMP_SPINCOUNT=30000 + timeout 4         ×1.17, ×1.29, kernels' wake-up as with defaults
 * The tiled esf_matmul (one pool) alternating with perturb: ×0.87–1.24 under every setting.
 *
 * Spinning is ruinous on a machine that is busy with other work: a parallel region's barrier
 * waits for a worker the kernel scheduler has put aside, once per kernel. tiny-austen on the CPU
 * backend with the 2 cores at load average 5: 7.1–8.0 s per iteration with GOMP_SPINCOUNT=30000,
 * 1.3–2.0 s with 0, 1.4–1.7 s on one thread. So the workers sleep at once (passive): a few µs a
 * kernel on a quiet machine, instead of seconds an iteration on a busy one.
 */
export const SPIN_SETTINGS: Readonly<Record<string, string>> = {
  // libgomp: idle workers sleep at once instead of spinning 300k iterations.
  GOMP_SPINCOUNT: "0",
  OMP_WAIT_POLICY: "passive",
  // LLVM's libomp (a clang build) spins 200 ms by default; 1 ms is its smallest (not measured).
  KMP_BLOCKTIME: "1",
  // OpenBLAS: idle workers sleep after 2^4 cycles instead of 2^28 (the smallest it accepts).
  OPENBLAS_THREAD_TIMEOUT: "4",
  // OpenBLAS runs single-threaded inside our tiles (esflow.c esf_matmul), so its pool is not
  // started when it loads; esf_sgemm_nt grows it on demand to measure the BLAS alone.
  OPENBLAS_NUM_THREADS: "1",
};

// FFI types, short, so that each signature reads in a line or two.
const P = "buffer", I64 = "i64", I32 = "i32", F32 = "f32", U32 = "u32";

// Parameter names and order are esflow.c's (the contract with the executor).
const SYMBOLS = {
  esf_init: { parameters: [P, I32], result: I32 },
  esf_info: { parameters: [], result: "pointer" },
  esf_blas_path: { parameters: [], result: "pointer" },
  esf_blas_config: { parameters: [], result: "pointer" },
  esf_features: { parameters: [], result: I32 },
  esf_set_threads: { parameters: [I32], result: "void" },
  // x, w, bias, out, M, N, K, w_row, bias_off, out_stride, out_col, has_bias, accumulate,
  // members, x_ms, w_ms, out_ms, b_ms
  esf_matmul: {
    parameters: [P, P, P, P, I64, I64, I64, I64, I64, I64, I64, I32, I32, I32, I64, I64, I64, I64],
    result: "void",
  },
  // x, wg, wu, out, M, N, K, g_row, u_row, out_stride, out_col, members, x_ms, w_ms, out_ms
  esf_matmul_swiglu: {
    parameters: [P, P, P, P, I64, I64, I64, I64, I64, I64, I64, I32, I64, I64, I64],
    result: "void",
  },
  // x, w, y, R, D, eps, RM, w_ms
  esf_rmsnorm: { parameters: [P, P, P, I64, I64, F32, I64, I64], result: "void" },
  // ids, table, x, R, H, row_start, rows, RM, t_ms
  esf_embedding: { parameters: [P, P, P, I64, I64, I64, I64, I64, I64], result: "void" },
  // x, w, cos, sin, R, T, NH, D, eps, RM, w_ms
  esf_qk_norm_rope: {
    parameters: [P, P, P, P, I64, I64, I64, I64, F32, I64, I64],
    result: "void",
  },
  // q, k, v, mask, out, B, T, NH, NKV, D, scale
  esf_attention: { parameters: [P, P, P, P, P, I64, I64, I64, I64, I64, F32], result: "void" },
  // gate, up, n
  esf_swiglu: { parameters: [P, P, I64], result: "void" },
  // logits, targets, state, R, C, C0, first
  esf_logsumexp_chunk: { parameters: [P, P, P, I64, I64, I64, I32], result: "void" },
  // targets, state, r, B, T
  esf_log_likelihood: { parameters: [P, P, P, I64, I64, I32], result: "void" },
  // r, total, B, r_off
  esf_accumulate: { parameters: [P, P, I64, I64], result: "void" },
  // shard, params, param_words, theta, theta_bf16, out, members
  esf_perturb: { parameters: [P, P, I64, P, I32, P, I32], result: "void" },
  // shard, update, theta, theta_bf16, injected
  esf_es_update: { parameters: [P, P, P, I32, P], result: "void" },
  // factor, params, update_mode, out
  esf_lowrank_factors: { parameters: [P, P, I32, P], result: "void" },
  // ids, a, bt, x, R, H, R4, RM, a_ms, b_ms
  esf_lowrank_embed: {
    parameters: [P, P, P, P, I64, I64, I64, I64, I64, I64],
    result: "void",
  },
  // x, N, base, sums
  esf_checksum: { parameters: [P, I64, U32, P], result: "void" },
  esf_sum_squares: { parameters: [P, I64, I64, I32, P, I64], result: "void" },
  // counter4, key2, out4
  esf_philox: { parameters: [P, P, P], result: "void" },
  // seed_lo, seed_hi, iteration, member, tensor, start, count, out
  esf_normals: { parameters: [U32, U32, U32, U32, U32, I64, I64, P], result: "void" },
  // M, N, K, a, b, c
  esf_sgemm_nt: { parameters: [I64, I64, I64, P, P, P], result: "void" },
  // x, w, cos, sin, pos, R, TN, NH, D, P, eps, RM, w_ms
  esf_qk_norm_rope_at: {
    parameters: [P, P, P, P, P, I64, I64, I64, I64, I64, F32, I64, I64],
    result: "void",
  },
  // k, v, pos, kc, vc, R, TN, SLOTS, W
  esf_kv_cache_write: { parameters: [P, P, P, P, P, I64, I64, I64, I64], result: "void" },
  // q, kc, vc, pos, out, R, TN, NH, NKV, D, SLOTS, scale
  esf_attention_cache: {
    parameters: [P, P, P, P, P, I64, I64, I64, I64, I64, I64, F32],
    result: "void",
  },
} as const satisfies Deno.ForeignLibraryInterface;

/** The raw entry points of libesflow, as Deno.dlopen types them (no checks). */
export type NativeSymbols = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

/** θ storage: f32 elements, or bf16 (element 2k in the low half of u32 word k). */
export type ThetaArray = Float32Array | Uint16Array | Uint32Array;

/** Options of {@link loadNative}. */
export interface NativeOptions {
  /** Threads of the BLAS and of the OpenMP kernels. Default $ESFLOW_THREADS, else all cores. */
  threads?: number;
}

let loading: Promise<Native> | null = null;

/**
 * The native kernels, built (or taken from the cache) and loaded once per process. A later call
 * with `threads` sets that thread count on the same instance.
 */
export async function loadNative(options: NativeOptions = {}): Promise<Native> {
  loading ??= openNative(options.threads ?? defaultThreads());
  const native = await loading;
  if (options.threads !== undefined && options.threads !== native.threads) {
    native.setThreads(options.threads);
  }
  return native;
}

function defaultThreads(): number {
  const env = Deno.env.get("ESFLOW_THREADS");
  if (env !== undefined && env !== "") {
    const n = Number(env);
    if (!Number.isInteger(n) || n < 1) {
      throw new UserError(`ESFLOW_THREADS must be a positive integer, got "${env}"`);
    }
    return n;
  }
  return Math.max(1, navigator.hardwareConcurrency ?? 1);
}

async function openNative(threads: number): Promise<Native> {
  checkThreads(threads);
  const path = await buildLibrary();
  for (const [name, value] of Object.entries(SPIN_SETTINGS)) {
    if (Deno.env.get(name) === undefined) Deno.env.set(name, value);
  }
  const lib = Deno.dlopen(path, SYMBOLS);
  for (const candidate of blasCandidates()) {
    if (lib.symbols.esf_init(cString(candidate), threads) === 0) {
      return new Native(lib, path, threads);
    }
  }
  lib.close();
  throw new UserError(NO_BLAS);
}

/** The BLAS libraries to try, best first (see the module doc). */
function blasCandidates(): string[] {
  const env = Deno.env.get("ESFLOW_BLAS");
  const own = env ? [env] : [];
  if (Deno.build.os === "darwin") {
    return [...own, "/System/Library/Frameworks/Accelerate.framework/Accelerate"];
  }
  const multiarch = `${Deno.build.arch}-linux-gnu`; // x86_64-linux-gnu, aarch64-linux-gnu
  return [
    ...own,
    `/usr/lib/${multiarch}/openblas-pthread/libopenblas.so.0`,
    "libopenblas.so.0",
    "libblas.so.3",
  ];
}

/**
 * Compiles esflow.c into the cache unless it is there already, without loading it; returns the
 * library's path. `deno task train` and `deno task test` call it first (tools/setup.ts).
 */
export async function buildLibrary(): Promise<string> {
  // The records' word offsets come from kernels/records.ts, the one definition of each layout.
  const source = cDefines() + '#line 1 "kernels/cpu/esflow.c"\n' + await Deno.readTextFile(SOURCE);
  const compiler = await findCompiler();
  const flags = ["-O3", "-march=native", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=off"];
  const libs = ["-lm", "-ldl"];
  const key = JSON.stringify({
    source,
    flags,
    libs,
    compiler: compiler.version,
    cpu: await cpuIdentity(),
    os: Deno.build.os,
    arch: Deno.build.arch,
  });
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(key));
  const hash = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  const dir = `${cacheRoot()}/esflow/native/${hash}`;
  const lib = `${dir}/libesflow.${Deno.build.os === "darwin" ? "dylib" : "so"}`;
  if (await exists(lib)) return lib;

  await Deno.mkdir(dir, { recursive: true });
  const tmp = `${lib}.${Deno.pid}.${crypto.randomUUID()}.tmp`;
  try {
    let result = await compile(compiler.command, source, [...flags, "-o", tmp, ...libs]);
    if (!result.ok && /openmp|omp\.h/i.test(result.stderr)) {
      // Apple clang has no -fopenmp: build without; the kernels then run single-threaded.
      const serial = flags.filter((f) => f !== "-fopenmp");
      result = await compile(compiler.command, source, [...serial, "-o", tmp, ...libs]);
    }
    if (!result.ok) {
      throw new UserError(`compiling kernels/cpu/esflow.c failed: ${firstError(result.stderr)}`);
    }
    // rename is atomic: a concurrent process sees no library or a whole one.
    await Deno.rename(tmp, lib);
  } finally {
    await Deno.remove(tmp).catch(() => {});
  }
  return lib;
}

async function compile(
  command: string,
  source: string,
  args: string[],
): Promise<{ ok: boolean; stderr: string }> {
  // The source goes through stdin, so what is compiled is exactly what was hashed.
  const child = new Deno.Command(command, {
    args: ["-x", "c", "-", ...args],
    stdin: "piped",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(source));
  await writer.close();
  const out = await child.output();
  return { ok: out.success, stderr: new TextDecoder().decode(out.stderr) };
}

/** The first line of compiler output that reports an error, with the file named. */
function firstError(stderr: string): string {
  const lines = stderr.split("\n").map((l) => l.replace(/^<stdin>/, "kernels/cpu/esflow.c"));
  return (lines.find((l) => /error/i.test(l)) ?? lines.find((l) => l.trim()) ?? "no output")
    .trim();
}

/** The first of cc, gcc, clang that runs, with the first line of its --version. */
async function findCompiler(): Promise<{ command: string; version: string }> {
  for (const command of ["cc", "gcc", "clang"]) {
    try {
      const out = await new Deno.Command(command, { args: ["--version"], stderr: "null" })
        .output();
      if (out.success) {
        return { command, version: new TextDecoder().decode(out.stdout).split("\n")[0] };
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  throw new UserError(NO_COMPILER);
}

/** What -march=native depends on: the CPU model and feature flags, where the OS tells. */
async function cpuIdentity(): Promise<string> {
  try {
    const info = await Deno.readTextFile("/proc/cpuinfo");
    const line = (re: RegExp) => info.split("\n").find((l) => re.test(l)) ?? "";
    return `${line(/^model name\s*:/)}\n${line(/^(flags|Features)\s*:/)}`;
  } catch {
    if (Deno.build.os !== "darwin") return "";
    try {
      const out = await new Deno.Command("sysctl", {
        args: ["-n", "machdep.cpu.brand_string"],
        stderr: "null",
      }).output();
      return new TextDecoder().decode(out.stdout).trim();
    } catch {
      return "";
    }
  }
}

function cacheRoot(): string {
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  if (xdg) return xdg;
  const home = Deno.env.get("HOME");
  return home ? `${home}/.cache` : `${Deno.env.get("TMPDIR") ?? "/tmp"}/esflow-cache`;
}

async function exists(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

function cString(s: string): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(s + "\0");
}

function readCString(p: Deno.PointerValue): string {
  return p === null ? "" : Deno.UnsafePointerView.getCString(p);
}

function checkThreads(n: number): void {
  if (!Number.isInteger(n) || n < 1) throw new Error(`native: threads must be ≥ 1, got ${n}`);
}

// ---------------------------------------------------------------------------------------------
// Argument checks: they guard memory safety, so each names the kernel and the shortfall.

/** A non-negative safe integer (sizes, offsets, strides). */
function size(kernel: string, name: string, v: number): number {
  if (!Number.isSafeInteger(v) || v < 0) {
    throw new Error(`${kernel}: ${name} must be a non-negative integer, got ${v}`);
  }
  return v;
}

/** A size the BLAS (or the C side) takes as a C int. */
function blasInt(kernel: string, name: string, v: number): number {
  size(kernel, name, v);
  if (v >= 2 ** 31) throw new Error(`${kernel}: ${name} = ${v} exceeds the BLAS's int`);
  return v;
}

/** Throws unless `array` holds at least `needed` elements. */
function holds(kernel: string, name: string, array: ArrayLike<unknown>, needed: number): void {
  if (array.length < needed) {
    throw new Error(`${kernel}: ${name} holds ${array.length} elements, needs ${needed}`);
  }
}

/** Throws unless `array` holds at least `needed` bytes. */
function holdsBytes(kernel: string, name: string, array: ArrayBufferView, needed: number): void {
  if (array.byteLength < needed) {
    throw new Error(`${kernel}: ${name} holds ${array.byteLength} bytes, needs ${needed}`);
  }
}

/** Elements an operand needs: `one` member's extent, `count` members `stride` apart. */
function forMembers(one: number, stride: number, count: number): number {
  return one === 0 ? 0 : (count - 1) * stride + one;
}

/** Members of a row-batched kernel: rows in blocks of rowsPerMember. */
function memberCount(kernel: string, rows: number, rowsPerMember: number): number {
  if (rows > 0 && rowsPerMember < 1) {
    throw new Error(`${kernel}: rowsPerMember must be ≥ 1, got ${rowsPerMember}`);
  }
  return rows === 0 ? 0 : Math.ceil(rows / rowsPerMember);
}

/** R = S·TN of a decode step, with pos holding every sequence's position. */
function decodeRows(kernel: string, o: DecodeRows): number {
  const s = size(kernel, "sequences", o.sequences), tn = size(kernel, "newTokens", o.newTokens);
  if (s > 0 && tn < 1) throw new Error(`${kernel}: newTokens must be ≥ 1`);
  holds(kernel, "pos", o.pos, s);
  return s * tn;
}

function isBf16(kernel: string, theta: ThetaArray, bf16: boolean | undefined): boolean {
  const b = bf16 ?? !(theta instanceof Float32Array);
  if (!b && !(theta instanceof Float32Array)) {
    throw new Error(`${kernel}: f32 θ must be a Float32Array`);
  }
  return b;
}

// ---------------------------------------------------------------------------------------------
// Options of the wrappers. Offsets and strides count elements; *Ms is a member stride.

/** Options of {@link Native.matmul}: out (+)= x·Wᵀ (+ bias), kernels/matmul.wgsl. */
export interface MatmulArgs {
  /** (M, K) per member. */
  x: Float32Array;
  /** (N_total, K) [out, in] per member; rows wRow .. wRow + n are used. */
  w: Float32Array;
  /** (n) at biasOff per member; absent: no bias. */
  bias?: Float32Array;
  /** (M, outStride) per member; columns outCol .. outCol + n are written. */
  out: Float32Array;
  m: number;
  n: number;
  k: number;
  /** First row of w used. Default 0. */
  wRow?: number;
  /** Offset of the bias. Default 0. */
  biasOff?: number;
  /** Row stride of out, ≥ n. Default n. */
  outStride?: number;
  /** First column of out written. Default 0. */
  outCol?: number;
  /** out += the result (a fused residual add). Default false. */
  accumulate?: boolean;
  /** Members (the WGSL grid z). Default 1. */
  members?: number;
  /** Member strides of x, w, out and bias. Default 0. */
  xMs?: number;
  wMs?: number;
  outMs?: number;
  bMs?: number;
}

/** Options of {@link Native.matmulSwiglu}: out = silu(x·Wgᵀ)·(x·Wuᵀ), matmul.wgsl SWIGLU. */
export interface MatmulSwigluArgs {
  /** (M, K) per member. */
  x: Float32Array;
  /** Gate weights (N_total, K) per member; rows gRow .. gRow + n are used. */
  wg: Float32Array;
  /** Up weights (N_total', K) per member; rows uRow .. uRow + n are used. May be wg. */
  wu: Float32Array;
  /** (M, outStride) per member; columns outCol .. outCol + n are written. */
  out: Float32Array;
  m: number;
  n: number;
  k: number;
  /** First rows of wg and wu used. Default 0. */
  gRow?: number;
  uRow?: number;
  /** Row stride of out. Default n. */
  outStride?: number;
  /** First column of out written. Default 0. */
  outCol?: number;
  /** Members. Default 1. */
  members?: number;
  /** Member strides of x, both weights, and out. Default 0. */
  xMs?: number;
  wMs?: number;
  outMs?: number;
}

/** Options of {@link Native.rmsnorm}: y = w·x·rsqrt(mean(x²) + eps), rmsnorm.wgsl. */
export interface RmsnormArgs {
  /** (rows, dim). */
  x: Float32Array;
  /** (dim) per member. */
  w: Float32Array;
  /** (rows, dim); may be x. */
  y: Float32Array;
  rows: number;
  dim: number;
  eps: number;
  /** Rows per member (RM). Default rows. */
  rowsPerMember?: number;
  /** Elements between members' w. Default 0. */
  wMs?: number;
}

/** Options of {@link Native.embedding}: x[r] = table[ids[r]] for ids in this shard. */
export interface EmbeddingArgs {
  /** (rows) token ids. */
  ids: Uint32Array;
  /** (tableRows, hidden) per member: vocab rows rowStart .. rowStart + tableRows. */
  table: Float32Array;
  /** (rows, hidden). */
  x: Float32Array;
  rows: number;
  hidden: number;
  /** First vocab id in the table shard. Default 0. */
  rowStart?: number;
  /** Vocab rows in the shard. */
  tableRows: number;
  /** Rows per member. Default rows. */
  rowsPerMember?: number;
  /** Elements between members' tables. Default 0. */
  tableMs?: number;
}

/** Options of {@link Native.qkNormRope}: per-head RMSNorm then RoPE in place. */
export interface QkNormRopeArgs {
  /** (rows, heads, headDim), rewritten. */
  x: Float32Array;
  /** (headDim) per member. */
  w: Float32Array;
  /** (seqLen, headDim/2) each (kernels/qk_norm_rope.ts ropeTables). */
  cos: Float32Array;
  sin: Float32Array;
  rows: number;
  seqLen: number;
  heads: number;
  /** Even. */
  headDim: number;
  eps: number;
  /** Rows per member. Default rows. */
  rowsPerMember?: number;
  /** Elements between members' w. Default 0. */
  wMs?: number;
}

/** Options of {@link Native.attention}: causal GQA with key padding, attention.wgsl. */
export interface AttentionArgs {
  /** (batch·seqLen, heads, headDim). */
  q: Float32Array;
  /** (batch·seqLen, kvHeads, headDim) each. */
  k: Float32Array;
  v: Float32Array;
  /** (batch·seqLen): 1 real token, 0 pad. */
  mask: Uint32Array;
  /** (batch·seqLen, heads, headDim). */
  out: Float32Array;
  batch: number;
  seqLen: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  /** Score scale. Default headDim^-0.5 rounded to f32. */
  scale?: number;
}

/** Options of {@link Native.swiglu}: gate = silu(gate)·up in place. */
export interface SwigluArgs {
  gate: Float32Array;
  up: Float32Array;
  /** Elements. Default gate.length. */
  n?: number;
}

/** Options of {@link Native.logsumexpChunk}: folds a vocab chunk into the streamed state. */
export interface LogsumexpChunkArgs {
  /** (rows, width): logits of vocab ids start .. start + width. */
  logits: Float32Array;
  /** (rows) u32, 0xffffffff: no target. */
  targets: Uint32Array;
  /** (rows, 3): max, sum of exponentials, target logit. */
  state: Float32Array;
  rows: number;
  width: number;
  start: number;
  /** The first chunk initialises the state. */
  first: boolean;
}

/** Options of {@link Native.logLikelihood}: per-sample R from the final state. */
export interface LogLikelihoodArgs {
  /** (batch·seqLen) u32. */
  targets: Uint32Array;
  /** (batch·seqLen, 3), or (scored rows, 3) when `compact`. */
  state: Float32Array;
  /** (batch). */
  r: Float32Array;
  batch: number;
  seqLen: number;
  /** state holds the scored rows alone, in row order. Default false. */
  compact?: boolean;
}

/** Options of {@link Native.accumulate}: total[0] += Σ r[offset .. offset + batch). */
export interface AccumulateArgs {
  r: Float32Array;
  /** One f32, the member's slot (a subarray). */
  total: Float32Array;
  batch: number;
  /** First sample added. Default 0. */
  offset?: number;
}

/** Options of {@link Native.perturb}: out = θ + s·m·ε for one shard, noise_perturb.wgsl. */
export interface PerturbArgs {
  /** One shard-table record (8 words: start, count, tensor, numel, m, src, dst, member_stride). */
  shard: Uint32Array;
  /** Perturb records (seed lo, seed hi, iteration, noise index, scale), paramWords apart. */
  params: Uint32Array;
  /** Words between records (es_update.ts paramStride / 4). Default 8. */
  paramWords?: number;
  /** The θ shard: holds element e at e − start + src. */
  theta: ThetaArray;
  /** bf16 θ. Default: θ is not a Float32Array. */
  bf16?: boolean;
  /** Member z's element e at e − start + dst + z·member_stride. */
  out: Float32Array;
  /** Members. Default 1. */
  members?: number;
}

/** Options of {@link Native.esUpdate}: θ += m·Σ_i d_i ε_i over one shard, es_update.wgsl. */
export interface EsUpdateArgs {
  /** One shard-table record. */
  shard: Uint32Array;
  /** (seed lo, seed hi, iteration, n, d_0 … d_{n−1}) (es_update.ts encodeUpdateParams). */
  update: Uint32Array;
  /** The θ shard, updated in place: count elements from start. */
  theta: ThetaArray;
  /** bf16 θ (stochastic rounding). Default: θ is not a Float32Array. */
  bf16?: boolean;
  /** Test mode: ε read from (n, numel) instead of regenerated. */
  injected?: Float32Array;
}

/** Options of {@link Native.lowrankFactors}: rows of a low-rank factor, lowrank_factors.wgsl. */
export interface LowrankFactorsArgs {
  /** One factor record (11 words, kernels/lowrank.ts createFactorTable). */
  factor: Uint32Array;
  /** A perturb record ("member") or the update params ("update"). */
  params: Uint32Array;
  mode: "member" | "update";
  out: Float32Array;
}

/** The rows of a KV-cache decode step: S sequences of TN new tokens, R = S·TN (kernels/kv_cache.ts). */
export interface DecodeRows {
  /** S: sequences. */
  sequences: number;
  /** TN: new tokens per sequence. */
  newTokens: number;
  /** (S) u32: the position (and cache slot) of each sequence's first new token. */
  pos: Uint32Array;
}

/** Options of {@link Native.qkNormRopeAt}: per-head RMSNorm then RoPE at buffered positions. */
export interface QkNormRopeAtArgs extends DecodeRows {
  /** (R, heads, headDim), rewritten. */
  x: Float32Array;
  /** (headDim) per member. */
  w: Float32Array;
  /** (positions, headDim/2) each (kernels/qk_norm_rope.ts ropeTables). */
  cos: Float32Array;
  sin: Float32Array;
  heads: number;
  /** Even. */
  headDim: number;
  /** P: rows of the tables; a later position is clamped to P − 1. */
  positions: number;
  eps: number;
  /** Rows per member. Default R. */
  rowsPerMember?: number;
  /** Elements between members' w. Default 0. */
  wMs?: number;
}

/** Options of {@link Native.kvCacheWrite}: each new row into its sequence's cache slot. */
export interface KvCacheWriteArgs extends DecodeRows {
  /** (R, width) each. */
  k: Float32Array;
  v: Float32Array;
  /** (S, slots, width) each. */
  kc: Float32Array;
  vc: Float32Array;
  slots: number;
  /** NKV·D. */
  width: number;
}

/** Options of {@link Native.attentionCache}: new queries over the cache, attention_cache.wgsl. */
export interface AttentionCacheArgs extends DecodeRows {
  /** (R, heads, headDim). */
  q: Float32Array;
  /** (S, slots, kvHeads, headDim) each. */
  kc: Float32Array;
  vc: Float32Array;
  /** (R, heads, headDim). */
  out: Float32Array;
  slots: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  /** Score scale. Default headDim^-0.5 rounded to f32. */
  scale?: number;
}

/** Options of {@link Native.lowrankEmbed}: x[r] += a[ids[r]]·Bᵀ, lowrank_embed.wgsl. */
export interface LowrankEmbedArgs {
  /** (rows) token ids. */
  ids: Uint32Array;
  /** (V, r4) per member. */
  a: Float32Array;
  /** (r4, hidden) per member. */
  bt: Float32Array;
  /** (rows, hidden), added to. */
  x: Float32Array;
  rows: number;
  hidden: number;
  r4: number;
  /** Rows per member. Default rows. */
  rowsPerMember?: number;
  /** Elements between members' a and bt. Default 0. */
  aMs?: number;
  bMs?: number;
}

/** Options of {@link Native.sumSquares}: partials of Σ x² as sum_squares.wgsl writes them. */
export interface SumSquaresArgs {
  /** Bit patterns of one shard: n f32, or n/2 words of bf16 pairs. */
  x: Uint32Array;
  /** Elements (not words). */
  n: number;
  /** Elements per partial; even for bf16. */
  per: number;
  /** Whether x holds bf16 pairs. */
  bf16: boolean;
  /** ceil(n / per) f32 partial sums, written. */
  partials: Float32Array;
}

/** Options of {@link Native.checksum}: sums += the two hashes of checksum.wgsl. */
export interface ChecksumArgs {
  /** Bit patterns of one shard (f32 or bf16 pairs as u32 words). */
  x: Uint32Array;
  /** Words. Default x.length. */
  n?: number;
  /** Index of x[0] among the tensor's words. Default 0. */
  base?: number;
  /** Two u32 sums, added to. */
  sums: Uint32Array;
}

/** Options of {@link Native.normals}: ε of elements start .. start + count of one stream. */
export interface NormalsArgs {
  seed: Seed;
  iteration: number;
  member: number;
  tensor: number;
  /** First element. Default 0. */
  start?: number;
  count: number;
  /** Receives the normals. Default a new array. */
  out?: Float32Array;
}

/** Options of {@link Native.sgemmNt}: c = a·bᵀ through the BLAS. */
export interface SgemmArgs {
  m: number;
  n: number;
  k: number;
  /** (m, k). */
  a: Float32Array;
  /** (n, k). */
  b: Float32Array;
  /** (m, n). */
  c: Float32Array;
}

/**
 * The loaded library: one method per C function of kernels/cpu/esflow.c, each checking the
 * arrays it is given and then calling the kernel synchronously on this thread.
 */
export class Native {
  /** The raw entry points, unchecked: a wrong length here corrupts memory. */
  readonly symbols: NativeSymbols;
  // Held so the library stays open for the life of the process (it is never closed).
  readonly #lib: Deno.DynamicLibrary<typeof SYMBOLS>;
  /** The compiled library's path in the cache. */
  readonly library: string;
  /** The BLAS file loaded and its name and version (e.g. "OpenBLAS 0.3.21 (pthread)"). */
  readonly blas: { path: string; config: string };
  /** Whether the kernels were built with OpenMP (otherwise they run single-threaded). */
  readonly openmp: boolean;
  /** Whether the noise and SIMD kernels use AVX2. */
  readonly avx2: boolean;
  #threads: number;

  /** Use {@link loadNative}; this wraps an already initialised library. */
  constructor(lib: Deno.DynamicLibrary<typeof SYMBOLS>, library: string, threads: number) {
    this.#lib = lib;
    const symbols = lib.symbols;
    this.symbols = symbols;
    this.library = library;
    this.blas = {
      path: readCString(symbols.esf_blas_path()),
      config: readCString(symbols.esf_blas_config()),
    };
    const features = symbols.esf_features();
    this.openmp = (features & 1) !== 0;
    this.avx2 = (features & 2) !== 0;
    this.#threads = threads;
  }

  /** Threads of the OpenMP kernels (the matmuls' tiles included; see the module doc). */
  get threads(): number {
    return this.#threads;
  }

  /**
   * One line: BLAS, path, threads, SIMD, e.g.
   * "OpenBLAS 0.3.21 (pthread) via /usr/lib/…/libopenblas.so.0, 2 threads, AVX2".
   */
  get info(): string {
    return readCString(this.symbols.esf_info());
  }

  /**
   * Sets the threads of the OpenMP kernels (and of {@link Native.sgemmNt}'s BLAS call). No
   * kernel's result depends on it. Not while a kernel runs on another thread.
   */
  setThreads(n: number): void {
    checkThreads(n);
    this.symbols.esf_set_threads(n);
    this.#threads = n;
  }

  /** out (+)= x·Wᵀ (+ bias) per member, through cblas_sgemm (esflow.c esf_matmul). */
  matmul(o: MatmulArgs): void {
    const K = "esf_matmul";
    const m = blasInt(K, "m", o.m), n = blasInt(K, "n", o.n), k = blasInt(K, "k", o.k);
    const wRow = size(K, "wRow", o.wRow ?? 0), biasOff = size(K, "biasOff", o.biasOff ?? 0);
    const outStride = blasInt(K, "outStride", o.outStride ?? n);
    const outCol = size(K, "outCol", o.outCol ?? 0);
    const members = blasInt(K, "members", o.members ?? 1);
    const xMs = size(K, "xMs", o.xMs ?? 0), wMs = size(K, "wMs", o.wMs ?? 0);
    const outMs = size(K, "outMs", o.outMs ?? 0), bMs = size(K, "bMs", o.bMs ?? 0);
    if (outStride < n) throw new Error(`${K}: outStride ${outStride} < n ${n}`);
    if (m > 0 && n > 0 && members > 0) {
      holds(K, "x", o.x, forMembers(m * k, xMs, members));
      holds(K, "w", o.w, forMembers((wRow + n) * k, wMs, members));
      holds(K, "out", o.out, forMembers((m - 1) * outStride + outCol + n, outMs, members));
      if (o.bias) holds(K, "bias", o.bias, forMembers(biasOff + n, bMs, members));
    }
    this.symbols.esf_matmul(
      o.x,
      o.w,
      o.bias ?? null,
      o.out,
      BigInt(m),
      BigInt(n),
      BigInt(k),
      BigInt(wRow),
      BigInt(biasOff),
      BigInt(outStride),
      BigInt(outCol),
      o.bias ? 1 : 0,
      o.accumulate ? 1 : 0,
      members,
      BigInt(xMs),
      BigInt(wMs),
      BigInt(outMs),
      BigInt(bMs),
    );
  }

  /** out = silu(x·Wgᵀ)·(x·Wuᵀ) per member (esflow.c esf_matmul_swiglu). */
  matmulSwiglu(o: MatmulSwigluArgs): void {
    const K = "esf_matmul_swiglu";
    const m = blasInt(K, "m", o.m), n = blasInt(K, "n", o.n), k = blasInt(K, "k", o.k);
    const gRow = size(K, "gRow", o.gRow ?? 0), uRow = size(K, "uRow", o.uRow ?? 0);
    const outStride = size(K, "outStride", o.outStride ?? n);
    const outCol = size(K, "outCol", o.outCol ?? 0);
    const members = blasInt(K, "members", o.members ?? 1);
    const xMs = size(K, "xMs", o.xMs ?? 0), wMs = size(K, "wMs", o.wMs ?? 0);
    const outMs = size(K, "outMs", o.outMs ?? 0);
    if (m > 0 && n > 0 && members > 0) {
      holds(K, "x", o.x, forMembers(m * k, xMs, members));
      holds(K, "wg", o.wg, forMembers((gRow + n) * k, wMs, members));
      holds(K, "wu", o.wu, forMembers((uRow + n) * k, wMs, members));
      holds(K, "out", o.out, forMembers((m - 1) * outStride + outCol + n, outMs, members));
    }
    this.symbols.esf_matmul_swiglu(
      o.x,
      o.wg,
      o.wu,
      o.out,
      BigInt(m),
      BigInt(n),
      BigInt(k),
      BigInt(gRow),
      BigInt(uRow),
      BigInt(outStride),
      BigInt(outCol),
      members,
      BigInt(xMs),
      BigInt(wMs),
      BigInt(outMs),
    );
  }

  /** RMSNorm of each row (esflow.c esf_rmsnorm). */
  rmsnorm(o: RmsnormArgs): void {
    const K = "esf_rmsnorm";
    const rows = size(K, "rows", o.rows), dim = size(K, "dim", o.dim);
    const rm = size(K, "rowsPerMember", o.rowsPerMember ?? Math.max(rows, 1));
    const wMs = size(K, "wMs", o.wMs ?? 0);
    holds(K, "x", o.x, rows * dim);
    holds(K, "y", o.y, rows * dim);
    holds(K, "w", o.w, forMembers(dim, wMs, memberCount(K, rows, rm)));
    this.symbols.esf_rmsnorm(
      o.x,
      o.w,
      o.y,
      BigInt(rows),
      BigInt(dim),
      o.eps,
      BigInt(rm),
      BigInt(wMs),
    );
  }

  /** Gathers the rows of one table shard (esflow.c esf_embedding). */
  embedding(o: EmbeddingArgs): void {
    const K = "esf_embedding";
    const rows = size(K, "rows", o.rows), hidden = size(K, "hidden", o.hidden);
    const rowStart = size(K, "rowStart", o.rowStart ?? 0);
    const tableRows = size(K, "tableRows", o.tableRows);
    const rm = size(K, "rowsPerMember", o.rowsPerMember ?? Math.max(rows, 1));
    const tableMs = size(K, "tableMs", o.tableMs ?? 0);
    holds(K, "ids", o.ids, rows);
    holds(K, "x", o.x, rows * hidden);
    holds(K, "table", o.table, forMembers(tableRows * hidden, tableMs, memberCount(K, rows, rm)));
    this.symbols.esf_embedding(
      o.ids,
      o.table,
      o.x,
      BigInt(rows),
      BigInt(hidden),
      BigInt(rowStart),
      BigInt(tableRows),
      BigInt(rm),
      BigInt(tableMs),
    );
  }

  /** Per-head RMSNorm then half-split RoPE, in place (esflow.c esf_qk_norm_rope). */
  qkNormRope(o: QkNormRopeArgs): void {
    const K = "esf_qk_norm_rope";
    const rows = size(K, "rows", o.rows), seqLen = size(K, "seqLen", o.seqLen);
    const heads = size(K, "heads", o.heads), headDim = size(K, "headDim", o.headDim);
    const rm = size(K, "rowsPerMember", o.rowsPerMember ?? Math.max(rows, 1));
    const wMs = size(K, "wMs", o.wMs ?? 0);
    if (headDim % 2 !== 0) throw new Error(`${K}: headDim ${headDim} must be even`);
    if (rows > 0 && seqLen < 1) throw new Error(`${K}: seqLen must be ≥ 1`);
    holds(K, "x", o.x, rows * heads * headDim);
    holds(K, "w", o.w, forMembers(headDim, wMs, memberCount(K, rows, rm)));
    const positions = Math.min(rows, seqLen);
    holds(K, "cos", o.cos, (positions * headDim) / 2);
    holds(K, "sin", o.sin, (positions * headDim) / 2);
    this.symbols.esf_qk_norm_rope(
      o.x,
      o.w,
      o.cos,
      o.sin,
      BigInt(rows),
      BigInt(seqLen),
      BigInt(heads),
      BigInt(headDim),
      o.eps,
      BigInt(rm),
      BigInt(wMs),
    );
  }

  /** Causal GQA attention with key padding (esflow.c esf_attention). */
  attention(o: AttentionArgs): void {
    const K = "esf_attention";
    const batch = size(K, "batch", o.batch), seqLen = size(K, "seqLen", o.seqLen);
    const heads = size(K, "heads", o.heads), kvHeads = size(K, "kvHeads", o.kvHeads);
    const headDim = size(K, "headDim", o.headDim);
    if (kvHeads < 1 || heads % kvHeads !== 0) {
      throw new Error(`${K}: ${heads} heads are not a multiple of ${kvHeads} kv heads`);
    }
    const rows = batch * seqLen;
    holds(K, "q", o.q, rows * heads * headDim);
    holds(K, "k", o.k, rows * kvHeads * headDim);
    holds(K, "v", o.v, rows * kvHeads * headDim);
    holds(K, "mask", o.mask, rows);
    holds(K, "out", o.out, rows * heads * headDim);
    const scale = o.scale ?? Math.fround(1 / Math.sqrt(headDim));
    this.symbols.esf_attention(
      o.q,
      o.k,
      o.v,
      o.mask,
      o.out,
      BigInt(batch),
      BigInt(seqLen),
      BigInt(heads),
      BigInt(kvHeads),
      BigInt(headDim),
      scale,
    );
  }

  /** gate = silu(gate)·up (esflow.c esf_swiglu). */
  swiglu(o: SwigluArgs): void {
    const K = "esf_swiglu";
    const n = size(K, "n", o.n ?? o.gate.length);
    holds(K, "gate", o.gate, n);
    holds(K, "up", o.up, n);
    this.symbols.esf_swiglu(o.gate, o.up, BigInt(n));
  }

  /** Folds one vocab chunk into the log-softmax state (esflow.c esf_logsumexp_chunk). */
  logsumexpChunk(o: LogsumexpChunkArgs): void {
    const K = "esf_logsumexp_chunk";
    const rows = size(K, "rows", o.rows), width = size(K, "width", o.width);
    const start = size(K, "start", o.start);
    holds(K, "logits", o.logits, rows * width);
    holds(K, "targets", o.targets, rows);
    holds(K, "state", o.state, rows * 3);
    this.symbols.esf_logsumexp_chunk(
      o.logits,
      o.targets,
      o.state,
      BigInt(rows),
      BigInt(width),
      BigInt(start),
      o.first ? 1 : 0,
    );
  }

  /** Per-sample log-likelihood fitness (esflow.c esf_log_likelihood). */
  logLikelihood(o: LogLikelihoodArgs): void {
    const K = "esf_log_likelihood";
    const batch = size(K, "batch", o.batch), seqLen = size(K, "seqLen", o.seqLen);
    holds(K, "targets", o.targets, batch * seqLen);
    let stateRows = batch * seqLen;
    if (o.compact) {
      stateRows = 0;
      for (let i = 0; i < batch * seqLen; i++) if (o.targets[i] !== 0xffffffff) stateRows++;
    }
    holds(K, "state", o.state, stateRows * 3);
    holds(K, "r", o.r, batch);
    this.symbols.esf_log_likelihood(
      o.targets,
      o.state,
      o.r,
      BigInt(batch),
      BigInt(seqLen),
      o.compact ? 1 : 0,
    );
  }

  /** total[0] += Σ r[offset ..], in order (esflow.c esf_accumulate). */
  accumulate(o: AccumulateArgs): void {
    const K = "esf_accumulate";
    const batch = size(K, "batch", o.batch), offset = size(K, "offset", o.offset ?? 0);
    holds(K, "r", o.r, batch === 0 ? 0 : offset + batch);
    holds(K, "total", o.total, 1);
    this.symbols.esf_accumulate(o.r, o.total, BigInt(batch), BigInt(offset));
  }

  /** The perturbed copy of one shard for each member (esflow.c esf_perturb). */
  perturb(o: PerturbArgs): void {
    const K = "esf_perturb";
    holds(K, "shard", o.shard, 8);
    const members = blasInt(K, "members", o.members ?? 1);
    const paramWords = size(K, "paramWords", o.paramWords ?? 8);
    const bf16 = isBf16(K, o.theta, o.bf16);
    const [, count, , , , src, dst, memberStride] = o.shard;
    if (count > 0 && members > 0) {
      if (members > 1 && paramWords < 5) {
        throw new Error(`${K}: paramWords ${paramWords} is shorter than a record (5 words)`);
      }
      holds(K, "params", o.params, forMembers(5, paramWords, members));
      holds(K, "out", o.out, forMembers(dst + count, memberStride, members));
      holdsBytes(K, "theta", o.theta, (src + count) * (bf16 ? 2 : 4));
    }
    this.symbols.esf_perturb(
      o.shard,
      o.params,
      BigInt(paramWords),
      o.theta,
      bf16 ? 1 : 0,
      o.out,
      members,
    );
  }

  /** θ += m·Σ_i d_i ε_i over one shard (esflow.c esf_es_update). */
  esUpdate(o: EsUpdateArgs): void {
    const K = "esf_es_update";
    holds(K, "shard", o.shard, 8);
    holds(K, "update", o.update, 4);
    const [start, count, , numel] = o.shard;
    const n = o.update[3];
    holds(K, "update", o.update, 4 + n);
    const bf16 = isBf16(K, o.theta, o.bf16);
    if (bf16 && (start % 2 !== 0 || count % 2 !== 0)) {
      throw new Error(
        `${K}: a bf16 shard must start and end on even elements (${start}, ${count})`,
      );
    }
    holdsBytes(K, "theta", o.theta, count * (bf16 ? 2 : 4));
    if (o.injected && count > 0) {
      if (start + count > numel) {
        throw new Error(`${K}: shard [${start}, ${start + count}) exceeds numel ${numel}`);
      }
      holds(K, "injected", o.injected, n * numel);
    }
    this.symbols.esf_es_update(o.shard, o.update, o.theta, bf16 ? 1 : 0, o.injected ?? null);
  }

  /** Rows of a low-rank factor, scaled, in a strided layout (esflow.c esf_lowrank_factors). */
  lowrankFactors(o: LowrankFactorsArgs): void {
    const K = "esf_lowrank_factors";
    holds(K, "factor", o.factor, 11);
    const update = o.mode === "update";
    holds(K, "params", o.params, update ? 4 : 5);
    const [, , rows, rank, rowStride, noiseStride, kStride, , , noise0, spanWord] = o.factor;
    const count = update ? o.params[3] : 1;
    if (update) holds(K, "params", o.params, 4 + count);
    const span = spanWord !== 0 ? spanWord : count - Math.min(noise0, count);
    if (rows > 0 && rank > 0 && span > 0) {
      const last = (rows - 1) * rowStride + (span - 1) * noiseStride + (rank - 1) * kStride;
      holds(K, "out", o.out, last + 1);
    }
    this.symbols.esf_lowrank_factors(o.factor, o.params, update ? 1 : 0, o.out);
  }

  /** x[r] += a[ids[r]]·Bᵀ (esflow.c esf_lowrank_embed). */
  lowrankEmbed(o: LowrankEmbedArgs): void {
    const K = "esf_lowrank_embed";
    const rows = size(K, "rows", o.rows), hidden = size(K, "hidden", o.hidden);
    const r4 = size(K, "r4", o.r4);
    const rm = size(K, "rowsPerMember", o.rowsPerMember ?? Math.max(rows, 1));
    const aMs = size(K, "aMs", o.aMs ?? 0), bMs = size(K, "bMs", o.bMs ?? 0);
    const members = memberCount(K, rows, rm);
    holds(K, "ids", o.ids, rows);
    holds(K, "x", o.x, rows * hidden);
    if (rows > 0 && r4 > 0) {
      let maxId = 0;
      for (let r = 0; r < rows; r++) maxId = Math.max(maxId, o.ids[r]);
      holds(K, `a (id ${maxId})`, o.a, forMembers((maxId + 1) * r4, aMs, members));
      holds(K, "bt", o.bt, forMembers(r4 * hidden, bMs, members));
    }
    this.symbols.esf_lowrank_embed(
      o.ids,
      o.a,
      o.bt,
      o.x,
      BigInt(rows),
      BigInt(hidden),
      BigInt(r4),
      BigInt(rm),
      BigInt(aMs),
      BigInt(bMs),
    );
  }

  /** Adds the two checksum hashes of x to sums (esflow.c esf_checksum). */
  checksum(o: ChecksumArgs): void {
    const K = "esf_checksum";
    const n = size(K, "n", o.n ?? o.x.length), base = o.base ?? 0;
    if (!Number.isInteger(base) || base < 0 || base > 0xFFFFFFFF) {
      throw new Error(`${K}: base ${base} must be a u32`);
    }
    holds(K, "x", o.x, n);
    holds(K, "sums", o.sums, 2);
    this.symbols.esf_checksum(o.x, BigInt(n), base, o.sums);
  }

  /** Writes the partial sums of squares of x (esflow.c esf_sum_squares). */
  sumSquares(o: SumSquaresArgs): void {
    const K = "esf_sum_squares";
    const n = size(K, "n", o.n), per = size(K, "per", o.per);
    if (per === 0 || (o.bf16 && per % 2 !== 0)) throw new Error(`${K}: per ${per} must be even`);
    const groups = Math.ceil(n / per);
    holds(K, "x", o.x, o.bf16 ? Math.ceil(n / 2) : n);
    holds(K, "partials", o.partials, groups);
    this.symbols.esf_sum_squares(
      o.x,
      BigInt(n),
      BigInt(per),
      o.bf16 ? 1 : 0,
      o.partials,
      BigInt(groups),
    );
  }

  /** Philox4x32-10 of one counter (4 words) under a key (2 words). */
  philox(counter: ArrayLike<number>, key: ArrayLike<number>): Uint32Array {
    const c = Uint32Array.from({ length: 4 }, (_, i) => counter[i]);
    const k = Uint32Array.from({ length: 2 }, (_, i) => key[i]);
    const out = new Uint32Array(4);
    this.symbols.esf_philox(c, k, out);
    return out;
  }

  /** ε of elements start .. start + count of one noise stream, as philox.ts gaussianNoise. */
  normals(o: NormalsArgs): Float32Array {
    const K = "esf_normals";
    const [lo, hi] = seedKey(o.seed);
    for (
      const [name, v] of [["iteration", o.iteration], ["member", o.member], ["tensor", o.tensor]]
    ) {
      if (!Number.isInteger(v) || (v as number) < 0 || (v as number) > 0xFFFFFFFF) {
        throw new Error(`${K}: ${name} ${v} must be a u32`);
      }
    }
    const start = size(K, "start", o.start ?? 0), count = size(K, "count", o.count);
    const out = o.out ?? new Float32Array(count);
    holds(K, "out", out, count);
    this.symbols.esf_normals(
      lo,
      hi,
      o.iteration,
      o.member,
      o.tensor,
      BigInt(start),
      BigInt(count),
      out,
    );
    return out;
  }

  /** Per-head RMSNorm then RoPE at buffered positions, in place (esflow.c esf_qk_norm_rope_at). */
  qkNormRopeAt(o: QkNormRopeAtArgs): void {
    const K = "esf_qk_norm_rope_at";
    const rows = decodeRows(K, o);
    const heads = size(K, "heads", o.heads), headDim = size(K, "headDim", o.headDim);
    const positions = size(K, "positions", o.positions);
    const rm = size(K, "rowsPerMember", o.rowsPerMember ?? Math.max(rows, 1));
    const wMs = size(K, "wMs", o.wMs ?? 0);
    if (headDim % 2 !== 0) throw new Error(`${K}: headDim ${headDim} must be even`);
    if (rows > 0 && positions < 1) throw new Error(`${K}: positions must be ≥ 1`);
    holds(K, "x", o.x, rows * heads * headDim);
    holds(K, "w", o.w, forMembers(headDim, wMs, memberCount(K, rows, rm)));
    let most = 0;
    for (let s = 0; s < o.sequences; s++) most = Math.max(most, o.pos[s] + o.newTokens - 1);
    const used = rows > 0 ? Math.min(most, positions - 1) + 1 : 0;
    holds(K, "cos", o.cos, (used * headDim) / 2);
    holds(K, "sin", o.sin, (used * headDim) / 2);
    this.symbols.esf_qk_norm_rope_at(
      o.x,
      o.w,
      o.cos,
      o.sin,
      o.pos,
      BigInt(rows),
      BigInt(o.newTokens),
      BigInt(heads),
      BigInt(headDim),
      BigInt(positions),
      o.eps,
      BigInt(rm),
      BigInt(wMs),
    );
  }

  /** Writes new key and value rows into their cache slots (esflow.c esf_kv_cache_write). */
  kvCacheWrite(o: KvCacheWriteArgs): void {
    const K = "esf_kv_cache_write";
    const rows = decodeRows(K, o);
    const slots = size(K, "slots", o.slots), width = size(K, "width", o.width);
    holds(K, "k", o.k, rows * width);
    holds(K, "v", o.v, rows * width);
    holds(K, "kc", o.kc, o.sequences * slots * width);
    holds(K, "vc", o.vc, o.sequences * slots * width);
    this.symbols.esf_kv_cache_write(
      o.k,
      o.v,
      o.pos,
      o.kc,
      o.vc,
      BigInt(rows),
      BigInt(o.newTokens),
      BigInt(slots),
      BigInt(width),
    );
  }

  /** New queries over the KV cache, causal by position (esflow.c esf_attention_cache). */
  attentionCache(o: AttentionCacheArgs): void {
    const K = "esf_attention_cache";
    const rows = decodeRows(K, o);
    const slots = size(K, "slots", o.slots);
    const heads = size(K, "heads", o.heads), kvHeads = size(K, "kvHeads", o.kvHeads);
    const headDim = size(K, "headDim", o.headDim);
    if (kvHeads < 1 || heads % kvHeads !== 0) {
      throw new Error(`${K}: ${heads} heads are not a multiple of ${kvHeads} kv heads`);
    }
    if (rows > 0 && slots < 1) throw new Error(`${K}: slots must be ≥ 1`);
    holds(K, "q", o.q, rows * heads * headDim);
    holds(K, "out", o.out, rows * heads * headDim);
    holds(K, "kc", o.kc, o.sequences * slots * kvHeads * headDim);
    holds(K, "vc", o.vc, o.sequences * slots * kvHeads * headDim);
    const scale = o.scale ?? Math.fround(1 / Math.sqrt(headDim));
    this.symbols.esf_attention_cache(
      o.q,
      o.kc,
      o.vc,
      o.pos,
      o.out,
      BigInt(rows),
      BigInt(o.newTokens),
      BigInt(heads),
      BigInt(kvHeads),
      BigInt(headDim),
      BigInt(slots),
      scale,
    );
  }

  /** c = a·bᵀ through the BLAS (esflow.c esf_sgemm_nt), for benchmarks. */
  sgemmNt(o: SgemmArgs): void {
    const K = "esf_sgemm_nt";
    const m = blasInt(K, "m", o.m), n = blasInt(K, "n", o.n), k = blasInt(K, "k", o.k);
    holds(K, "a", o.a, m * k);
    holds(K, "b", o.b, n * k);
    holds(K, "c", o.c, m * n);
    this.symbols.esf_sgemm_nt(BigInt(m), BigInt(n), BigInt(k), o.a, o.b, o.c);
  }
}
