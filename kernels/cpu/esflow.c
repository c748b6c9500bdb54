// esflow.c: the compute kernels of esflow's CPU backend, one C function per WGSL kernel in
// kernels/*.wgsl, computing what that kernel computes (the .wgsl is the semantic source; the
// comment above each function names it). kernels/cpu/native.ts compiles this file, loads it
// with Deno.dlopen and validates every array length before a call: nothing here checks bounds.
//
// Legend (every matrix is row-major f32 unless stated; offsets and strides count elements):
//   z  = population member of a batched call (`members` of them: the WGSL dispatch's grid z);
//        *_ms = elements between consecutive members' copies of an operand (0: shared)
//   M  = rows of x, K = inner width, N = output columns (rows of the [out, in] weight used)
//   R  = token rows (B·T), B = samples, T = tokens per sample, RM = rows per member
//   H  = hidden width, D = normalised width / head_dim, NH = query heads, NKV = kv heads
//   C  = vocab chunk width, C0 = its first vocab id
//   e  = element index in a whole tensor; block = e/4, the four elements one Philox call feeds
//   n  = noises of an ES update (N, or N/2 with antithetic pairs folded)
//
// Numerics. IEEE f32 throughout: built without -ffast-math and with -ffp-contract=off, so
// a·b + c is two roundings as written, never a fused multiply-add. SIMD code uses GNU vector
// types (v8f: 8 floats), whose operators are the same elementwise IEEE operations as scalar
// code, so the AVX2 build, a build for a CPU without AVX and the partial tails give identical
// bits (checked: every kernel's output, byte for byte, -march=native against plain x86-64 and
// x86-64-v2 without OpenMP). exp and log are our own (Cephes polynomials, ≤ 1.4 ulp), not
// libm's, whose CPU-specific variants may differ in the last bit between machines. Every
// reduction has a fixed order (8 lanes, lane = index mod 8, then a fixed tree), and OpenMP
// only splits independent work, so every result is bit-identical run to run and for any
// thread count. The matmuls' bits are the BLAS's: the same for any thread count (see
// esf_matmul), but they may differ between BLAS builds and CPUs.
//
// Noise (kernels/noise.wgsl, kernels/philox.ts): Philox4x32-10 words are bit-exact; the
// normals follow the WGSL's Box–Muller step for step (noise_log_unit's atanh branch above
// 0.75, noise_sincospi's exact reduction and Taylor polynomials), with our own log below 0.75.
// Over all 2^24 radius words the radius is within 1.2e-7 (relative) of philox.ts's f64-rounded
// one, and over all 2^24 angle words sin and cos within 1.5e-7. AVX2 builds run eight Philox
// counters per instruction with _mm256_mul_epu32; 1 Zen 3 core makes ~480 M normals/s.
//
// Threads: the kernels run on one OpenMP pool; the BLAS is called single-threaded from it.
// esf_matmul_swiglu keeps a scratch block per thread (thread-local), so calls from different
// host threads do not share state, but calls should not overlap with esf_set_threads.

#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <link.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(__AVX2__) || defined(__AVX__)
#include <immintrin.h>
#endif

#define EXPORT __attribute__((visibility("default")))
#define INLINE static inline __attribute__((always_inline))

// Work below which a kernel runs on the calling thread. The OpenMP workers sleep between regions
// (kernels/cpu/native.ts SPIN_SETTINGS), and waking one and waiting for it costs ~0.1 ms on a
// KVM guest: on the tiny preset at 2 threads, RMSNorm of 2048 × 128 took 0.24 ms against 0.12 on
// one, and a whole ES iteration spent 389 ms in perturb against 151 on one thread (chunks of a
// few thousand elements), before these bounds. Elements of a streaming kernel; of one with an exp
// per element; groups of 32 perturbed elements (each a Philox draw) times members.
#define PAR_STREAM (1 << 20)
#define PAR_EXP (1 << 17)
#define PAR_PERTURB_GROUPS 4096

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef uint32_t v8u __attribute__((vector_size(32)));

// ---------------------------------------------------------------------------------------------
// BLAS, loaded at run time (esf_init), and the thread settings.

typedef void (*sgemm_fn)(int order, int trans_a, int trans_b, int m, int n, int k, float alpha,
                         const float* a, int lda, const float* b, int ldb, float beta, float* c,
                         int ldc);
enum { CBLAS_ROW_MAJOR = 101, CBLAS_NO_TRANS = 111, CBLAS_TRANS = 112 };

static sgemm_fn blas_sgemm;
static void (*blas_set_threads)(int);
static char blas_path_s[512];
static char blas_config_s[256];
static char info_s[1024];
static int n_threads = 1;

static void write_info(void) {
  const char* simd =
#if defined(__AVX2__)
      "AVX2";
#else
      "scalar";
#endif
  snprintf(info_s, sizeof info_s, "%s via %s, %d thread%s, %s%s", blas_config_s, blas_path_s,
           n_threads, n_threads == 1 ? "" : "s", simd,
#if defined(_OPENMP)
           ""
#else
           ", no OpenMP (single-threaded kernels)"
#endif
  );
}

// Sets the threads of our OpenMP kernels. The BLAS itself stays single-threaded: the matmuls
// call it from OpenMP threads on fixed tiles (see esf_matmul), except esf_sgemm_nt.
EXPORT void esf_set_threads(int threads) {
  n_threads = threads < 1 ? 1 : threads;
  if (blas_set_threads) blas_set_threads(1);
#if defined(_OPENMP)
  omp_set_num_threads(n_threads);
#endif
  write_info();
}

// Loads the BLAS at `blas_path` (a path, or a bare name the loader searches), finds
// cblas_sgemm (required) and OpenBLAS's thread and config entry points (optional), and sets
// `threads`. Returns 0, 1 when the library does not load, 2 when it has no cblas_sgemm; on an
// error esf_info() says why.
EXPORT int esf_init(const char* blas_path, int threads) {
  // Deno dlcloses this library at exit while OpenMP's workers still sleep inside libgomp;
  // unmapping libgomp under them crashed 3 exits in 6. Pinned, it (and so libgomp) stays.
  Dl_info self;
  if (dladdr((void*)esf_init, &self) && self.dli_fname) {
    dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
  }
  void* h = dlopen(blas_path, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char* why = dlerror();
    snprintf(info_s, sizeof info_s, "cannot load %s: %s", blas_path, why ? why : "?");
    return 1;
  }
  sgemm_fn sgemm = (sgemm_fn)dlsym(h, "cblas_sgemm");
  if (!sgemm) {
    snprintf(info_s, sizeof info_s, "%s has no cblas_sgemm", blas_path);
    dlclose(h);
    return 2;
  }
  blas_sgemm = sgemm;
  blas_set_threads = (void (*)(int))dlsym(h, "openblas_set_num_threads");
  char* (*get_config)(void) = (char* (*)(void))dlsym(h, "openblas_get_config");
  int (*get_parallel)(void) = (int (*)(void))dlsym(h, "openblas_get_parallel");
  snprintf(blas_path_s, sizeof blas_path_s, "%s", blas_path);
#if defined(__linux__)
  // The file the loader actually opened (a bare name resolves through the loader path).
  struct link_map* lm = NULL;
  if (dlinfo(h, RTLD_DI_LINKMAP, &lm) == 0 && lm && lm->l_name && lm->l_name[0]) {
    snprintf(blas_path_s, sizeof blas_path_s, "%s", lm->l_name);
  }
#endif
  if (get_config) {
    // "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Zen MAX_THREADS=64": keep name and version.
    char name[64] = "", version[64] = "";
    sscanf(get_config(), "%63s %63s", name, version);
    const char* kind = "";
    if (get_parallel) {
      int p = get_parallel();
      kind = p == 0 ? " (serial)" : p == 1 ? " (pthread)" : p == 2 ? " (openmp)" : "";
    }
    snprintf(blas_config_s, sizeof blas_config_s, "%s %s%s", name, version, kind);
  } else if (strstr(blas_path_s, "Accelerate")) {
    snprintf(blas_config_s, sizeof blas_config_s, "Accelerate");
  } else {
    snprintf(blas_config_s, sizeof blas_config_s, "BLAS without openblas_get_config (maybe the "
                                                  "slow reference BLAS)");
  }
  esf_set_threads(threads);
  return 0;
}

// One line: "OpenBLAS 0.3.21 (pthread) via /path, 2 threads, AVX2", or why esf_init failed.
EXPORT const char* esf_info(void) { return info_s; }

// The BLAS file esf_init loaded, and its name/version as openblas_get_config gives it.
EXPORT const char* esf_blas_path(void) { return blas_path_s; }
EXPORT const char* esf_blas_config(void) { return blas_config_s; }

// Bit 0: built with OpenMP; bit 1: AVX2 kernels.
EXPORT int esf_features(void) {
  int f = 0;
#if defined(_OPENMP)
  f |= 1;
#endif
#if defined(__AVX2__)
  f |= 2;
#endif
  return f;
}

// ---------------------------------------------------------------------------------------------
// Vector helpers. Each has a scalar twin doing the same IEEE operations in the same order.

INLINE v8f load8(const float* p) {
  v8f v;
  memcpy(&v, p, sizeof v);
  return v;
}
INLINE void store8(float* p, v8f v) { memcpy(p, &v, sizeof v); }
INLINE v8f splat8(float x) { return (v8f){x, x, x, x, x, x, x, x}; }
INLINE v8f select8(v8i mask, v8f a, v8f b) {
  return (v8f)(((v8i)a & mask) | ((v8i)b & ~mask));
}
INLINE v8f max8(v8f a, v8f b) { return select8(a > b, a, b); }
INLINE float bits_f(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
INLINE uint32_t f_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

// Round to the nearest integer, ties to even, for |x| < 2^22: adding 1.5·2^23 leaves no
// fraction bits, so the default rounding mode does the rounding (WGSL round()).
#define ROUND_MAGIC 12582912.0f
INLINE v8f rint8(v8f x) { return (x + ROUND_MAGIC) - ROUND_MAGIC; }
INLINE float rint_f(float x) { return (x + ROUND_MAGIC) - ROUND_MAGIC; }

INLINE v8f sqrt8(v8f x) {
#if defined(__AVX__)
  return (v8f)_mm256_sqrt_ps((__m256)x);
#else
  v8f r;
  for (int l = 0; l < 8; l++) r[l] = sqrtf(x[l]);
  return r;
#endif
}

// The 8 lanes of a fixed-order sum, combined by a fixed tree.
INLINE float tree8(const float l[8]) {
  return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

// n floats, 64-byte aligned. Out of memory is fatal: the kernels have no error path.
static float* alloc_floats(int64_t n) {
  size_t bytes = ((size_t)(n > 0 ? n : 1) * sizeof(float) + 63) & ~(size_t)63;
  float* p = aligned_alloc(64, bytes);
  if (!p) {
    fprintf(stderr, "esflow: out of memory allocating %zu bytes\n", bytes);
    abort();
  }
  return p;
}

// tree8 of each of eight vectors at once: lane s of the result is tree8(v[s]). An 8 × 8
// transpose turns lanes into vectors, then the tree's adds run across them.
INLINE v8f tree8_columns(const v8f v[8]) {
  v8f t[8];
#if defined(__AVX__)
  __m256 a0 = _mm256_unpacklo_ps((__m256)v[0], (__m256)v[1]);
  __m256 a1 = _mm256_unpackhi_ps((__m256)v[0], (__m256)v[1]);
  __m256 a2 = _mm256_unpacklo_ps((__m256)v[2], (__m256)v[3]);
  __m256 a3 = _mm256_unpackhi_ps((__m256)v[2], (__m256)v[3]);
  __m256 a4 = _mm256_unpacklo_ps((__m256)v[4], (__m256)v[5]);
  __m256 a5 = _mm256_unpackhi_ps((__m256)v[4], (__m256)v[5]);
  __m256 a6 = _mm256_unpacklo_ps((__m256)v[6], (__m256)v[7]);
  __m256 a7 = _mm256_unpackhi_ps((__m256)v[6], (__m256)v[7]);
  __m256 b0 = _mm256_shuffle_ps(a0, a2, 0x44), b1 = _mm256_shuffle_ps(a0, a2, 0xEE);
  __m256 b2 = _mm256_shuffle_ps(a1, a3, 0x44), b3 = _mm256_shuffle_ps(a1, a3, 0xEE);
  __m256 b4 = _mm256_shuffle_ps(a4, a6, 0x44), b5 = _mm256_shuffle_ps(a4, a6, 0xEE);
  __m256 b6 = _mm256_shuffle_ps(a5, a7, 0x44), b7 = _mm256_shuffle_ps(a5, a7, 0xEE);
  t[0] = (v8f)_mm256_permute2f128_ps(b0, b4, 0x20);
  t[1] = (v8f)_mm256_permute2f128_ps(b1, b5, 0x20);
  t[2] = (v8f)_mm256_permute2f128_ps(b2, b6, 0x20);
  t[3] = (v8f)_mm256_permute2f128_ps(b3, b7, 0x20);
  t[4] = (v8f)_mm256_permute2f128_ps(b0, b4, 0x31);
  t[5] = (v8f)_mm256_permute2f128_ps(b1, b5, 0x31);
  t[6] = (v8f)_mm256_permute2f128_ps(b2, b6, 0x31);
  t[7] = (v8f)_mm256_permute2f128_ps(b3, b7, 0x31);
#else
  for (int l = 0; l < 8; l++) {
    for (int s = 0; s < 8; s++) t[l][s] = v[s][l];
  }
#endif
  return ((t[0] + t[4]) + (t[2] + t[6])) + ((t[1] + t[5]) + (t[3] + t[7]));
}

// Σ x[j]² in lanes j mod 8, then the fixed tree.
static float sumsq(const float* x, int64_t n) {
  v8f acc = splat8(0.0f);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    v8f v = load8(x + j);
    acc = acc + v * v;
  }
  float l[8];
  store8(l, acc);
  for (int t = 0; j < n; j++, t++) l[t] = l[t] + x[j] * x[j];
  return tree8(l);
}

// e^x, Cephes expf: n = round(x·log2 e), r = x − n·ln 2 in two parts, a degree-6 polynomial,
// then 2^n applied as two halves so the result under- and overflows gradually (denormals,
// then 0; inf above ~88.72) as libm's does. NaN stays NaN.
#define EXP_LO -104.0f
#define EXP_HI 89.0f
#define LOG2E_F 1.44269504088896341f
#define LN2_HI 0.693359375f
#define LN2_LO -2.12194440e-4f
INLINE v8f exp8(v8f x) {
  v8i nan = x != x;
  v8f xc = select8(nan, splat8(0.0f), x);
  xc = select8(xc < EXP_LO, splat8(EXP_LO), xc);
  xc = select8(xc > EXP_HI, splat8(EXP_HI), xc);
  v8f fn = rint8(xc * LOG2E_F);
  v8f r = xc - fn * LN2_HI;
  r = r - fn * LN2_LO;
  v8f z = r * r;
  v8f y = (((((1.9875691500E-4f * r + 1.3981999507E-3f) * r + 8.3334519073E-3f) * r +
             4.1665795894E-2f) * r + 1.6666665459E-1f) * r + 5.0000001201E-1f) * z + r + 1.0f;
  v8i n = __builtin_convertvector(fn, v8i);
  v8i n1 = n >> 1, n2 = n - n1;
  y = y * (v8f)((n1 + 127) << 23);
  y = y * (v8f)((n2 + 127) << 23);
  return select8(nan, x, y);
}
INLINE float exp_f(float x) {
  if (x != x) return x;
  float xc = x < EXP_LO ? EXP_LO : x;
  xc = xc > EXP_HI ? EXP_HI : xc;
  float fn = rint_f(xc * LOG2E_F);
  float r = xc - fn * LN2_HI;
  r = r - fn * LN2_LO;
  float z = r * r;
  float y = (((((1.9875691500E-4f * r + 1.3981999507E-3f) * r + 8.3334519073E-3f) * r +
               4.1665795894E-2f) * r + 1.6666665459E-1f) * r + 5.0000001201E-1f) * z + r + 1.0f;
  int32_t n = (int32_t)fn, n1 = n >> 1, n2 = n - n1;
  y = y * bits_f((uint32_t)(n1 + 127) << 23);
  y = y * bits_f((uint32_t)(n2 + 127) << 23);
  return y;
}

#define SQRT_HALF 0.707106781186547524f
// ln x, Cephes logf: x = m·2^e with m ∈ [√½, √2), a degree-9 polynomial in m − 1, e·ln 2
// added in two parts. Normal positive x only; libm takes the rest (0, denormals, inf, NaN,
// negatives), which only the log-likelihood's degenerate rows reach.
static float log_f(float x) {
  if (!(x >= 1.17549435e-38f && x <= 3.40282347e38f)) return logf(x);
  int32_t bits = (int32_t)f_bits(x);
  int32_t e = ((bits >> 23) & 0xff) - 126;
  float m = bits_f((uint32_t)((bits & 0x007fffff) | 0x3f000000));
  if (m < SQRT_HALF) {
    e -= 1;
    m = m + m - 1.0f;
  } else {
    m = m - 1.0f;
  }
  float fe = (float)e;
  float z = m * m;
  float y = ((((((((7.0376836292E-2f * m - 1.1514610310E-1f) * m + 1.1676998740E-1f) * m -
                  1.2420140846E-1f) * m + 1.4249322787E-1f) * m - 1.6668057665E-1f) * m +
               2.0000714765E-1f) * m - 2.4999993993E-1f) * m + 3.3333331174E-1f) * m * z;
  y = y + LN2_LO * fe;
  y = y + -0.5f * z;
  float r = m + y;
  return r + LN2_HI * fe;
}

// silu(g)·u = g / (1 + e^-g) · u, as kernels/swiglu.wgsl writes it (−0 for g ≪ 0).
INLINE v8f silu_mul8(v8f g, v8f u) { return g / (1.0f + exp8(-g)) * u; }
INLINE float silu_mul(float g, float u) { return g / (1.0f + exp_f(-g)) * u; }

// ---------------------------------------------------------------------------------------------
// Philox4x32-10 and Box–Muller (kernels/noise.wgsl).

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u
#define TWO_NEG_24 5.9604644775390625e-8f
#define TWO_NEG_23 1.1920928955078125e-7f
#define NOISE_PI 3.14159265358979323846f

static void philox1(const uint32_t in[4], uint32_t k0, uint32_t k1, uint32_t out[4]) {
  uint32_t c0 = in[0], c1 = in[1], c2 = in[2], c3 = in[3];
  for (int round = 0; round < 10; round++) {
    uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2;
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += PHILOX_W0;
    k1 += PHILOX_W1;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// Four words per lane: lane l is Philox4x32-10 of counter (c0[l], c1[l], c2[l], c3[l]).
typedef struct {
  v8u w0, w1, w2, w3;
} words8;

#if defined(__AVX2__)
// 32×32→64 products of eight lanes: _mm256_mul_epu32 multiplies the even lanes, a 64-bit
// shift brings the odd lanes down, and a blend puts the high words back in lane order. The
// low words come from _mm256_mullo_epi32 (measured 7% faster than shifting and blending them).
INLINE __m256i mulhilo8(__m256i a, __m256i m, __m256i* hi) {
  __m256i even = _mm256_mul_epu32(a, m);
  __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  return _mm256_mullo_epi32(a, m);
}
#endif

INLINE words8 philox8(v8u c0, v8u c1, v8u c2, v8u c3, uint32_t k0, uint32_t k1) {
  words8 w;
#if defined(__AVX2__)
  __m256i a0 = (__m256i)c0, a1 = (__m256i)c1, a2 = (__m256i)c2, a3 = (__m256i)c3;
  const __m256i m0 = _mm256_set1_epi32((int)PHILOX_M0), m1 = _mm256_set1_epi32((int)PHILOX_M1);
  for (int round = 0; round < 10; round++) {
    __m256i hi0, hi1;
    __m256i lo0 = mulhilo8(a0, m0, &hi0);
    __m256i lo1 = mulhilo8(a2, m1, &hi1);
    a0 = _mm256_xor_si256(_mm256_xor_si256(hi1, a1), _mm256_set1_epi32((int)k0));
    a1 = lo1;
    a2 = _mm256_xor_si256(_mm256_xor_si256(hi0, a3), _mm256_set1_epi32((int)k1));
    a3 = lo0;
    k0 += PHILOX_W0;
    k1 += PHILOX_W1;
  }
  w.w0 = (v8u)a0;
  w.w1 = (v8u)a1;
  w.w2 = (v8u)a2;
  w.w3 = (v8u)a3;
#else
  for (int l = 0; l < 8; l++) {
    uint32_t in[4] = {c0[l], c1[l], c2[l], c3[l]}, out[4];
    philox1(in, k0, k1, out);
    w.w0[l] = out[0];
    w.w1[l] = out[1];
    w.w2[l] = out[2];
    w.w3[l] = out[3];
  }
#endif
  return w;
}

// The eight Philox blocks b0 .. b0+7 of one noise stream: counter (block, tensor, member,
// iteration), key (seed lo, seed hi).
INLINE words8 stream8(uint32_t k0, uint32_t k1, uint32_t iteration, uint32_t member,
                      uint32_t tensor, uint32_t b0) {
  const v8u lane = {0, 1, 2, 3, 4, 5, 6, 7};
  v8u zero = lane - lane;
  return philox8(lane + b0, zero + tensor, zero + member, zero + iteration, k0, k1);
}

// noise_log_unit: ln u for u ∈ (0, 1]. Above 0.75 exactly the WGSL's series, 2·atanh(s) with
// s = (u − 1)/(u + 1) to s^7 (u − 1 is exact there). Below, where the WGSL calls log(), the
// same identity on the mantissa: u = m·2^e with m ∈ [√½, √2), ln u = e·ln 2 + 2·atanh(s),
// s = (m − 1)/(m + 1), |s| < 0.172, to s^9 (truncation < 3e-10 relative), so one division
// serves both branches. Over all 2^24 values of u the result is within 3.6 ulp of ln u.
INLINE v8f log_unit8(v8f u) {
  v8i near1 = u > 0.75f;
  v8i bits = (v8i)u;
  v8i e = ((bits >> 23) & 0xff) - 126;
  v8f m = (v8f)((bits & 0x007fffff) | 0x3f000000);  // [0.5, 1)
  v8i small = m < SQRT_HALF;
  e = (e + small) & ~near1;  // small is −1 where true; e = 0 on the near-1 branch
  m = select8(near1, u, select8(small, m + m, m));
  v8f s = (m - 1.0f) / (m + 1.0f);
  v8f s2 = s * s;
  // The s^9 term is 0 on the near-1 branch: 1/7 + s2·0 is 1/7, the WGSL's last coefficient.
  v8f c9 = select8(near1, splat8(0.0f), splat8((float)(1.0 / 9.0)));
  v8f at = 2.0f * s *
           (1.0f + s2 * ((float)(1.0 / 3.0) + s2 * (0.2f + s2 * ((float)(1.0 / 7.0) + s2 * c9))));
  v8f fe = __builtin_convertvector(e, v8f);
  return (fe * LN2_LO + at) + fe * LN2_HI;
}

// noise_box_muller for eight word pairs (a, b): z0 = r·cos πt, z1 = r·sin πt, with
// noise_sincospi's reduction q = round(2t), x = π·(t − q/2), Taylor series on |x| ≤ π/4 and
// a quarter-turn rotation by q.
INLINE void box_muller8(v8u a, v8u b, v8f* z0, v8f* z1) {
  v8f u = __builtin_convertvector((v8i)((a >> 8) + 1), v8f) * TWO_NEG_24;
  v8f radius = sqrt8(-2.0f * log_unit8(u));
  v8f t = __builtin_convertvector((v8i)(b >> 8), v8f) * TWO_NEG_23 - 1.0f;
  v8f q = rint8(2.0f * t);
  v8f x = NOISE_PI * (t - 0.5f * q);
  v8f x2 = x * x;
  v8f s = x * (1.0f + x2 * ((float)(-1.0 / 6.0) +
                            x2 * ((float)(1.0 / 120.0) +
                                  x2 * ((float)(-1.0 / 5040.0) + x2 * (float)(1.0 / 362880.0)))));
  v8f c = 1.0f + x2 * (-0.5f + x2 * ((float)(1.0 / 24.0) +
                                     x2 * ((float)(-1.0 / 720.0) + x2 * (float)(1.0 / 40320.0))));
  // Quarter turns mod 4: 0 → (s, c), 1 → (c, −s), 2 → (−s, −c), 3 → (−c, s) as (sin, cos).
  v8i turn = (__builtin_convertvector(q, v8i) + 4) & 3;
  v8i swap = (turn & 1) != 0;
  v8f sn = select8(swap, c, s), cs = select8(swap, s, c);
  v8i sign = (v8i){0, 0, 0, 0, 0, 0, 0, 0} + (int32_t)0x80000000;
  sn = (v8f)((v8i)sn ^ (((turn & 2) != 0) & sign));
  cs = (v8f)((v8i)cs ^ ((((turn ^ (turn >> 1)) & 1) != 0) & sign));
  *z0 = radius * cs;
  *z1 = radius * sn;
}

// The 32 normals of blocks b0 .. b0+7 in lane order: nk[l] is element 4·(b0 + l) + k.
typedef struct {
  v8f n0, n1, n2, n3;
} normals8;

INLINE normals8 normals_of(words8 w) {
  normals8 n;
  box_muller8(w.w0, w.w1, &n.n0, &n.n1);
  box_muller8(w.w2, w.w3, &n.n2, &n.n3);
  return n;
}

// The same 32 normals in element order: out[4l + k] = nk[l].
INLINE void normals_store(normals8 n, float out[32]) {
#if defined(__AVX__)
  __m256 t0 = _mm256_unpacklo_ps((__m256)n.n0, (__m256)n.n1);
  __m256 t1 = _mm256_unpackhi_ps((__m256)n.n0, (__m256)n.n1);
  __m256 t2 = _mm256_unpacklo_ps((__m256)n.n2, (__m256)n.n3);
  __m256 t3 = _mm256_unpackhi_ps((__m256)n.n2, (__m256)n.n3);
  __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  _mm256_storeu_ps(out, _mm256_permute2f128_ps(u0, u1, 0x20));
  _mm256_storeu_ps(out + 8, _mm256_permute2f128_ps(u2, u3, 0x20));
  _mm256_storeu_ps(out + 16, _mm256_permute2f128_ps(u0, u1, 0x31));
  _mm256_storeu_ps(out + 24, _mm256_permute2f128_ps(u2, u3, 0x31));
#else
  for (int l = 0; l < 8; l++) {
    out[4 * l] = n.n0[l];
    out[4 * l + 1] = n.n1[l];
    out[4 * l + 2] = n.n2[l];
    out[4 * l + 3] = n.n3[l];
  }
#endif
}

INLINE void words_store(words8 w, uint32_t out[32]) {
  for (int l = 0; l < 8; l++) {
    out[4 * l] = w.w0[l];
    out[4 * l + 1] = w.w1[l];
    out[4 * l + 2] = w.w2[l];
    out[4 * l + 3] = w.w3[l];
  }
}

// Philox4x32-10 of one counter: out4 = words of (counter4, key2), as kernels/philox.ts.
EXPORT void esf_philox(const uint32_t* counter4, const uint32_t* key2, uint32_t* out4) {
  philox1(counter4, key2[0], key2[1], out4);
}

// ε of elements start .. start+count−1 of one noise stream, as kernels/philox.ts
// gaussianNoise gives them: out is (count), out[i] = ε[start + i].
EXPORT void esf_normals(uint32_t seed_lo, uint32_t seed_hi, uint32_t iteration, uint32_t member,
                        uint32_t tensor, int64_t start, int64_t count, float* out) {
  if (count <= 0) return;
  const int64_t end = start + count, g0 = start / 32, g1 = (end - 1) / 32 + 1;
#pragma omp parallel for schedule(static) if (g1 - g0 > 16)
  for (int64_t g = g0; g < g1; g++) {
    float z[32];
    normals_store(normals_of(stream8(seed_lo, seed_hi, iteration, member, tensor,
                                     (uint32_t)(g * 8))),
                  z);
    const int64_t e0 = g * 32;
    if (e0 >= start && e0 + 32 <= end) {
      memcpy(out + (e0 - start), z, sizeof z);
    } else {
      for (int j = 0; j < 32; j++) {
        if (e0 + j >= start && e0 + j < end) out[e0 + j - start] = z[j];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Linear layers (kernels/matmul.wgsl) through cblas_sgemm.
//
// OpenBLAS's own threading gives results that change with its thread count (elements split
// differently across its micro-kernels differ in the last bits), so the BLAS runs
// single-threaded and we parallelise: out is cut into fixed tiles, chosen from the shape
// alone, each one sgemm call on one OpenMP thread. Every element then comes from the same call
// whatever the thread count. Measured on 2 Zen 3 cores through native.ts, best of 5: 85.8 and
// 170.4 GFLOP/s at 1024³ on 1 and 2 threads, against 92.3 and 180.0 for one sgemm on OpenBLAS's
// own threads; 162–171 on transformer shapes (2048×384×128, 2048×128×384, 4096×1024×1024).

static void sgemm_nt(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                     int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  blas_sgemm(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_TRANS, (int)m, (int)n, (int)k, 1.0f, a,
             (int)(lda > 0 ? lda : 1), b, (int)(ldb > 0 ? ldb : 1), beta, c, (int)ldc);
}

// Tiles of at most 512 × 512, halved (the longer side first) while there are fewer than 64 and
// a halved tile still carries 2^27 flops, so small problems still spread over the cores and big
// ones keep the BLAS's packing cost low.
#define TILE_MAX 512
#define TILE_TARGET 64
#define TILE_MIN_FLOPS 134217728.0
typedef struct {
  int64_t rows, cols, nr, nc;
} tiling;

static tiling tiles_for(int64_t M, int64_t N, int64_t K) {
  tiling t = {M < TILE_MAX ? M : TILE_MAX, N < TILE_MAX ? N : TILE_MAX, 0, 0};
  for (;;) {
    t.nr = (M + t.rows - 1) / t.rows;
    t.nc = (N + t.cols - 1) / t.cols;
    if (t.nr * t.nc >= TILE_TARGET) break;
    int64_t* side = t.cols >= t.rows ? &t.cols : &t.rows;
    const int64_t other = side == &t.cols ? t.rows : t.cols;
    const int64_t half = ((*side + 1) / 2 + 15) / 16 * 16;
    if (half >= *side || 2.0 * (double)half * (double)other * (double)K < TILE_MIN_FLOPS) break;
    *side = half;
  }
  return t;
}

// matmul.wgsl with SWIGLU false. x is members × (M, K), w is members × (N_total, K) in
// [out, in] layout with rows w_row .. w_row+N used, bias is members × (N) at bias_off, out is
// members × (M, out_stride) with columns out_col .. out_col+N written:
//   out[z·out_ms + r·out_stride + out_col + c] (+)= Σ_k x[z·x_ms + r·K + k]
//                                               · w[z·w_ms + (w_row + c)·K + k] (+ bias[…])
// Members that share w and whose rows are contiguous run as one (members·M)-row matmul. Each
// tile is one sgemm with beta = 1 when accumulating, then the tile's bias pass. out must not
// overlap x, w or bias.
EXPORT void esf_matmul(const float* x, const float* w, const float* bias, float* out, int64_t M,
                       int64_t N, int64_t K, int64_t w_row, int64_t bias_off, int64_t out_stride,
                       int64_t out_col, int32_t has_bias, int32_t accumulate, int32_t members,
                       int64_t x_ms, int64_t w_ms, int64_t out_ms, int64_t b_ms) {
  if (M <= 0 || N <= 0 || members <= 0) return;
  const float beta = accumulate ? 1.0f : 0.0f;
  int64_t groups = members, rows = M;
  if (members > 1 && w_ms == 0 && x_ms == M * K && out_ms == M * out_stride) {
    groups = 1;
    rows = M * members;
  }
  const tiling t = tiles_for(rows, N, K);
  const int64_t tasks = groups * t.nr * t.nc;
#pragma omp parallel for schedule(dynamic, 1) if (tasks > 1)
  for (int64_t task = 0; task < tasks; task++) {
    const int64_t z = task / (t.nr * t.nc), i = (task / t.nc) % t.nr, j = task % t.nc;
    const int64_t r0 = i * t.rows, c0 = j * t.cols;
    const int64_t mr = rows - r0 < t.rows ? rows - r0 : t.rows;
    const int64_t nc = N - c0 < t.cols ? N - c0 : t.cols;
    float* o = out + z * out_ms + r0 * out_stride + out_col + c0;
    sgemm_nt(mr, nc, K, x + z * x_ms + r0 * K, K, w + z * w_ms + (w_row + c0) * K, K, beta, o,
             out_stride);
    if (!has_bias) continue;
    for (int64_t r = 0; r < mr; r++) {
      // A merged group's row r0 + r belongs to member (r0 + r) / M.
      const int64_t member = groups == 1 ? (r0 + r) / M : z;
      const float* b = bias + bias_off + member * b_ms + c0;
      float* orow = o + r * out_stride;
      for (int64_t c = 0; c < nc; c++) orow[c] = orow[c] + b[c];
    }
  }
}

// Gate and up tiles of esf_matmul_swiglu (at most 512 × 512 floats each, 1 MiB), kept per
// thread across calls.
static __thread float* swiglu_scratch;
static __thread int64_t swiglu_scratch_floats;

// matmul.wgsl with SWIGLU true: Qwen3's gate and up projections fused with their activation.
// x is members × (M, K), wg and wu are members × (N_total, K) (rows g_row.. and u_row..; both
// use w_ms), out is members × (M, out_stride) with columns out_col .. out_col+N written:
//   out[…] = silu(x·Wgᵀ)·(x·Wuᵀ), silu(g) = g / (1 + e^-g)
// Per tile the gate and up sgemms land in two small scratch blocks, then are combined into out.
EXPORT void esf_matmul_swiglu(const float* x, const float* wg, const float* wu, float* out,
                              int64_t M, int64_t N, int64_t K, int64_t g_row, int64_t u_row,
                              int64_t out_stride, int64_t out_col, int32_t members,
                              int64_t x_ms, int64_t w_ms, int64_t out_ms) {
  if (M <= 0 || N <= 0 || members <= 0) return;
  int64_t groups = members, rows = M;
  if (members > 1 && w_ms == 0 && x_ms == M * K && out_ms == M * out_stride) {
    groups = 1;
    rows = M * members;
  }
  const tiling t = tiles_for(rows, N, K);
  const int64_t tasks = groups * t.nr * t.nc;
#pragma omp parallel for schedule(dynamic, 1) if (tasks > 1)
  for (int64_t task = 0; task < tasks; task++) {
    const int64_t z = task / (t.nr * t.nc), i = (task / t.nc) % t.nr, j = task % t.nc;
    const int64_t r0 = i * t.rows, c0 = j * t.cols;
    const int64_t mr = rows - r0 < t.rows ? rows - r0 : t.rows;
    const int64_t nc = N - c0 < t.cols ? N - c0 : t.cols;
    if (swiglu_scratch_floats < 2 * mr * nc) {
      free(swiglu_scratch);
      swiglu_scratch_floats = 2 * t.rows * t.cols;
      swiglu_scratch = alloc_floats(swiglu_scratch_floats);
    }
    float* gate = swiglu_scratch;
    float* up = swiglu_scratch + mr * nc;
    const float* xz = x + z * x_ms + r0 * K;
    sgemm_nt(mr, nc, K, xz, K, wg + z * w_ms + (g_row + c0) * K, K, 0.0f, gate, nc);
    sgemm_nt(mr, nc, K, xz, K, wu + z * w_ms + (u_row + c0) * K, K, 0.0f, up, nc);
    for (int64_t r = 0; r < mr; r++) {
      const float* g = gate + r * nc;
      const float* u = up + r * nc;
      float* o = out + z * out_ms + (r0 + r) * out_stride + out_col + c0;
      int64_t c = 0;
      for (; c + 8 <= nc; c += 8) store8(o + c, silu_mul8(load8(g + c), load8(u + c)));
      for (; c < nc; c++) o[c] = silu_mul(g[c], u[c]);
    }
  }
}

// C = A·Bᵀ in one cblas_sgemm with the BLAS's own threads (the configured count), for
// benchmarks of the BLAS itself: a is (M, K), b is (N, K), c is (M, N). Unlike the kernels, its
// bits may depend on the thread count.
EXPORT void esf_sgemm_nt(int64_t M, int64_t N, int64_t K, const float* a, const float* b,
                         float* c) {
  if (blas_set_threads) blas_set_threads(n_threads);
  sgemm_nt(M, N, K, a, K, b, K, 0.0f, c, N);
  if (blas_set_threads) blas_set_threads(1);
}

// ---------------------------------------------------------------------------------------------
// Norms, RoPE, embeddings, activations (rmsnorm, qk_norm_rope, embedding, swiglu .wgsl).

// rmsnorm.wgsl: y = w · x · rsqrt(mean(x²) + eps), as HF Qwen3RMSNorm. x and y are (R, D)
// (y may be x), w is (D) per member: row r uses w at (r / RM)·w_ms.
EXPORT void esf_rmsnorm(const float* x, const float* w, float* y, int64_t R, int64_t D, float eps,
                        int64_t RM, int64_t w_ms) {
#pragma omp parallel for schedule(static) if (R * D >= PAR_STREAM)
  for (int64_t r = 0; r < R; r++) {
    const float* xr = x + r * D;
    float* yr = y + r * D;
    const float* wr = w + (r / RM) * w_ms;
    const float inv = 1.0f / sqrtf(sumsq(xr, D) / (float)D + eps);
    for (int64_t i = 0; i < D; i++) yr[i] = wr[i] * (xr[i] * inv);
  }
}

// embedding.wgsl, one row shard of the table: ids is (R) u32, table is (rows, H), the rows
// row_start .. row_start+rows of embed_tokens (member m's at m·t_ms, m = r / RM), x is (R, H).
// Rows whose id lies outside the shard are left untouched (other shards write them).
EXPORT void esf_embedding(const uint32_t* ids, const float* table, float* x, int64_t R, int64_t H,
                          int64_t row_start, int64_t rows, int64_t RM, int64_t t_ms) {
#pragma omp parallel for schedule(static) if (R * H >= PAR_STREAM)
  for (int64_t r = 0; r < R; r++) {
    const int64_t id = ids[r];
    if (id < row_start || id >= row_start + rows) continue;
    memcpy(x + r * H, table + (r / RM) * t_ms + (id - row_start) * H, (size_t)H * sizeof(float));
  }
}

// One head of esf_qk_norm_rope and esf_qk_norm_rope_at, in place: RMS-normalised with w, then
// rotated by half-split RoPE with this position's cos and sin (D/2 each).
INLINE void norm_rope_head(float* xh, const float* wr, const float* c, const float* s, int64_t D,
                           float eps) {
  const int64_t half = D / 2;
  const float inv = 1.0f / sqrtf(sumsq(xh, D) / (float)D + eps);
  for (int64_t j = 0; j < half; j++) {
    const float a = wr[j] * (xh[j] * inv);
    const float b = wr[j + half] * (xh[j + half] * inv);
    xh[j] = a * c[j] - b * s[j];
    xh[j + half] = b * c[j] + a * s[j];
  }
}

// qk_norm_rope.wgsl, in place: x is (R, NH, D); each head is RMS-normalised with w (D) (member
// m's at m·w_ms, m = r / RM), then rotated by half-split RoPE at position r mod T with cos and
// sin (T, D/2): out[i] = a[i]·cos − a[i+D/2]·sin, out[i+D/2] = a[i+D/2]·cos + a[i]·sin.
EXPORT void esf_qk_norm_rope(float* x, const float* w, const float* cos_t, const float* sin_t,
                             int64_t R, int64_t T, int64_t NH, int64_t D, float eps, int64_t RM,
                             int64_t w_ms) {
  const int64_t half = D / 2;
#pragma omp parallel for schedule(static) if (R * NH * D >= PAR_STREAM)
  for (int64_t i = 0; i < R * NH; i++) {
    const int64_t row = i / NH, pos = row % T;
    float* xh = x + i * D;
    const float* wr = w + (row / RM) * w_ms;
    const float* c = cos_t + pos * half;
    const float* s = sin_t + pos * half;
    norm_rope_head(xh, wr, c, s, D, eps);
  }
}

// swiglu.wgsl, in place: gate = silu(gate)·up over n elements (gate and up are (R, I)).
EXPORT void esf_swiglu(float* gate, const float* up, int64_t n) {
  const int64_t groups = n / 8;
#pragma omp parallel for schedule(static) if (n >= PAR_EXP)
  for (int64_t g = 0; g < groups; g++) {
    store8(gate + 8 * g, silu_mul8(load8(gate + 8 * g), load8(up + 8 * g)));
  }
  for (int64_t i = groups * 8; i < n; i++) gate[i] = silu_mul(gate[i], up[i]);
}

// ---------------------------------------------------------------------------------------------
// Attention (kernels/attention.wgsl, attention.ts).

// Queries per block: each loaded key vector serves this many queries' scores.
#define ATTN_QB 8

// attention.wgsl: causal grouped-query attention with key padding. q is (B·T, NH, D), k and v
// are (B·T, NKV, D), mask is (B·T) u32 (1 = real token), out is (B·T, NH, D). Query head h
// reads kv head h / (NH / NKV). Query t attends the keys s ≤ t with mask 1:
//   score_s = (q_t·scale)·k_s,  p_s = e^(score_s − max_s score_s),  out_t = Σ_s p_s·v_s / Σ_s p_s
// and a query with no valid key gets 0. The WGSL folds the keys in with an online softmax; here
// each query's scores are computed first, eight keys at a time against the kv head's keys
// transposed once per (b, h) (no horizontal sums), then one exponential pass and one weighted
// sum of the values: the same softmax, rounded in a fixed order of its own (bit-identical run
// to run and across thread counts; within f32 rounding of the WGSL). Padded query positions are
// computed like any other. Parallel over (b, h).
// Measured on Zen 3, 2 threads (others busy: load average 2): B = 32, T = 64, 4/2 heads,
// D = 32 (the tiny preset) 1.9 ms, and B = 16, T = 256, 8/4 heads, D = 128 76–82 ms, where the
// key-by-key online softmax took 5.3 and 128 ms.
EXPORT void esf_attention(const float* q, const float* k, const float* v, const uint32_t* mask,
                          float* out, int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t D,
                          float scale) {
  const int64_t group = NH / NKV, tasks = B * NH;
  const int64_t T8 = (T + 7) / 8 * 8;
#pragma omp parallel if (tasks > 1 && B * NH * T * T * D > 65536)
  {
    // kT: the kv head's keys transposed, (D, T8), pad keys zero; sc: a block's scores
    // (ATTN_QB, T8); qs: its scaled queries (D, ATTN_QB), d-major.
    float* kT = alloc_floats(D * T8 + ATTN_QB * T8 + D * ATTN_QB);
    float* sc = kT + D * T8;
    float* qs = sc + ATTN_QB * T8;
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; task++) {
      const int64_t h = task % NH, b = task / NH, g = h / group;
      // Keys past the last valid one are never used: no query sees a valid key there.
      int64_t keys = 0;
      for (int64_t s = 0; s < T; s++) {
        if (mask[b * T + s]) keys = s + 1;
      }
      const int64_t K8 = (keys + 7) / 8 * 8;
      for (int64_t d = 0; d < D; d++) {
        float* row = kT + d * T8;
        for (int64_t s = 0; s < keys; s++) row[s] = k[((b * T + s) * NKV + g) * D + d];
        for (int64_t s = keys; s < K8; s++) row[s] = 0.0f;
      }
      const float* vb = v + (b * T * NKV + g) * D;
      const int64_t vs = NKV * D;
      for (int64_t t0 = 0; t0 < T; t0 += ATTN_QB) {
        const int64_t nq = T - t0 < ATTN_QB ? T - t0 : ATTN_QB;
        // The block's keys: those the block's last query may see.
        const int64_t nb = t0 + nq < keys ? t0 + nq : keys, nb8 = (nb + 7) / 8 * 8;
        for (int64_t d = 0; d < D; d++) {
          for (int64_t i = 0; i < ATTN_QB; i++) {
            qs[d * ATTN_QB + i] = i < nq ? q[((b * T + t0 + i) * NH + h) * D + d] * scale : 0.0f;
          }
        }
        // Scores of the block's queries against keys 0 .. nb−1, eight keys at a time, each
        // loaded key vector serving the ATTN_QB queries (independent chains), d in order.
        for (int64_t s0 = 0; s0 < nb8; s0 += 8) {
          v8f a[ATTN_QB];
          for (int64_t i = 0; i < ATTN_QB; i++) a[i] = splat8(0.0f);
          for (int64_t d = 0; d < D; d++) {
            const v8f kd = load8(kT + d * T8 + s0);
            const float* qd = qs + d * ATTN_QB;
            for (int64_t i = 0; i < ATTN_QB; i++) a[i] = a[i] + qd[i] * kd;
          }
          for (int64_t i = 0; i < ATTN_QB; i++) store8(sc + i * T8 + s0, a[i]);
        }
        for (int64_t i = 0; i < nq; i++) {
          const int64_t t = t0 + i;
          float* o = out + ((b * T + t) * NH + h) * D;
          float* p = sc + i * T8;
          const int64_t n = t + 1 < keys ? t + 1 : keys;  // keys s < n are causal candidates
          float m = -3.0e38f;
          int any = 0;
          for (int64_t s = 0; s < n; s++) {
            if (!mask[b * T + s]) continue;
            any = 1;
            if (p[s] > m) m = p[s];
          }
          if (!any) {
            memset(o, 0, (size_t)D * sizeof(float));
            continue;
          }
          // p_s = e^(score − m), 0 for masked and later keys; the sum in order of s.
          const int64_t n8 = (n + 7) / 8 * 8;
          for (int64_t s0 = 0; s0 < n8; s0 += 8) store8(p + s0, exp8(load8(p + s0) - m));
          float l = 0.0f;
          for (int64_t s = 0; s < n; s++) {
            if (!mask[b * T + s]) p[s] = 0.0f;
            l += p[s];
          }
          const float inv = 1.0f / l;
          // out = Σ_s p_s·v_s / l, s in order: 32 columns at a time in four chains, then 8.
          int64_t j = 0;
          for (; j + 32 <= D; j += 32) {
            v8f a0 = splat8(0.0f), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t s = 0; s < n; s++) {
              const float* vr = vb + s * vs + j;
              const float ps = p[s];
              a0 = a0 + ps * load8(vr);
              a1 = a1 + ps * load8(vr + 8);
              a2 = a2 + ps * load8(vr + 16);
              a3 = a3 + ps * load8(vr + 24);
            }
            store8(o + j, a0 * inv);
            store8(o + j + 8, a1 * inv);
            store8(o + j + 16, a2 * inv);
            store8(o + j + 24, a3 * inv);
          }
          for (; j + 8 <= D; j += 8) {
            v8f acc = splat8(0.0f);
            for (int64_t s = 0; s < n; s++) acc = acc + p[s] * load8(vb + s * vs + j);
            store8(o + j, acc * inv);
          }
          for (; j < D; j++) {
            float acc = 0.0f;
            for (int64_t s = 0; s < n; s++) acc += p[s] * vb[s * vs + j];
            o[j] = acc * inv;
          }
        }
      }
    }
    free(kT);
  }
}

// ---------------------------------------------------------------------------------------------
// Fitness (logsumexp_chunk, log_likelihood, accumulate .wgsl).

// logsumexp_chunk.wgsl: folds one vocabulary chunk into each row's streamed log-softmax state.
// logits is (R, C) = z[:, C0 .. C0+C), targets is (R) u32 (0xffffffff: none), state is (R, 3)
// f32 (running max m, sum s of e^(z − m), target logit), initialised by the first chunk. Rows
// with no target are skipped, their state left as it was (esf_log_likelihood never reads it).
EXPORT void esf_logsumexp_chunk(const float* logits, const uint32_t* targets, float* state,
                                int64_t R, int64_t C, int64_t C0, int32_t first) {
#pragma omp parallel for schedule(static) if (R * C >= PAR_EXP)
  for (int64_t r = 0; r < R; r++) {
    const uint32_t t = targets[r];
    if (t == 0xffffffffu) continue;
    float m = -3.0e38f, s = 0.0f, tg = 0.0f;
    if (!first) {
      m = state[3 * r];
      s = state[3 * r + 1];
      tg = state[3 * r + 2];
    }
    const float* z = logits + r * C;
    v8f cm8 = splat8(-3.0e38f);
    int64_t j = 0;
    for (; j + 8 <= C; j += 8) cm8 = max8(cm8, load8(z + j));
    float lanes[8];
    store8(lanes, cm8);
    float cm = -3.0e38f;
    for (int t = 0; t < 8; t++) cm = lanes[t] > cm ? lanes[t] : cm;
    for (; j < C; j++) cm = z[j] > cm ? z[j] : cm;
    const float mn = cm > m ? cm : m;
    v8f cs8 = splat8(0.0f);
    for (j = 0; j + 8 <= C; j += 8) cs8 = cs8 + exp8(load8(z + j) - mn);
    store8(lanes, cs8);
    for (int t = 0; j < C; j++, t++) lanes[t] = lanes[t] + exp_f(z[j] - mn);
    s = s * exp_f(m - mn) + tree8(lanes);
    if ((int64_t)t >= C0 && (int64_t)t < C0 + C) tg = z[(int64_t)t - C0];
    state[3 * r] = mn;
    state[3 * r + 1] = s;
    state[3 * r + 2] = tg;
  }
}

// log_likelihood.wgsl: the paper's per-sample fitness from the final state. targets is (B·T)
// u32 (0xffffffff: not scored), state is (B·T, 3), r is (B):
//   r[b] = Σ_t (tg − (m + ln s)) / #scored, summed over t in order, or 0 with none scored.
// compact: state holds the scored rows alone, in row order (the LM head ran over those only).
EXPORT void esf_log_likelihood(const uint32_t* targets, const float* state, float* r, int64_t B,
                               int64_t T, int32_t compact) {
  int64_t at = 0;  // scored rows before sample b
  for (int64_t b = 0; b < B; b++) {
    float sum = 0.0f;
    uint32_t n = 0;
    for (int64_t t = 0; t < T; t++) {
      const int64_t row = b * T + t;
      if (targets[row] == 0xffffffffu) continue;
      const int64_t s = compact ? at + n : row;
      sum += state[3 * s + 2] - (state[3 * s] + log_f(state[3 * s + 1]));
      n++;
    }
    at += n;
    r[b] = n > 0 ? sum / (float)n : 0.0f;
  }
}

// accumulate.wgsl: *total += r[r_off] + … + r[r_off + B − 1], added one by one in order.
EXPORT void esf_accumulate(const float* r, float* total, int64_t B, int64_t r_off) {
  float s = total[0];
  for (int64_t b = 0; b < B; b++) s += r[r_off + b];
  total[0] = s;
}

// ---------------------------------------------------------------------------------------------
// ES kernels (noise_perturb.wgsl, es_update.wgsl, kernels/es_update.ts).

// One shard-table record. The ESF_<RECORD>_<FIELD> word offsets of every record are generated
// from kernels/records.ts and prepended to this file when it is built (kernels/cpu/native.ts).
typedef struct {
  int64_t start, count, numel, src, dst, member_stride;
  uint32_t tensor;
  float multiplier;
} shard_rec;

static shard_rec read_shard(const uint32_t* s) {
  shard_rec r;
  r.start = s[ESF_SHARD_START];
  r.count = s[ESF_SHARD_COUNT];
  r.tensor = s[ESF_SHARD_TENSOR];
  r.numel = s[ESF_SHARD_NUMEL];
  r.multiplier = bits_f(s[ESF_SHARD_MULTIPLIER]);
  r.src = s[ESF_SHARD_SRC];
  r.dst = s[ESF_SHARD_DST];
  r.member_stride = s[ESF_SHARD_MEMBER_STRIDE];
  return r;
}

// θ element i as f32: f32 storage, or bf16 (element 2k in the low half of word k, which on a
// little-endian machine is u16 element 2k).
INLINE float theta_at(const void* theta, int bf16, int64_t i) {
  if (bf16) return bits_f((uint32_t)((const uint16_t*)theta)[i] << 16);
  return ((const float*)theta)[i];
}

// noise_perturb.wgsl: the perturbed copy θ' = θ + s·m·ε of one shard (or chunk) of a tensor.
// shard is one record (start, count, tensor, numel, multiplier m, src, dst, member_stride):
// elements e ∈ [start, start + count) of the tensor. params is members records param_words
// apart: (seed lo, seed hi, iteration, noise index, scale s as f32 bits). theta holds e at
// e − start + src (f32, or bf16 pairs in u32 words); out receives member z's e at
// e − start + dst + z·member_stride:
//   out[…] = θ[e − start + src] + (s·m)·ε(seed, iteration, noise index, tensor, e)
// Measured on Zen 3: 440 M elements/s on 1 core, 840 M on 2 (f32 or bf16 θ).
EXPORT void esf_perturb(const uint32_t* shard, const uint32_t* params, int64_t param_words,
                        const void* theta, int32_t theta_bf16, float* out, int32_t members) {
  const shard_rec sh = read_shard(shard);
  if (sh.count <= 0 || members <= 0) return;
  const int64_t end = sh.start + sh.count, g0 = sh.start / 32, g1 = (end - 1) / 32 + 1;
  const int64_t groups = g1 - g0;
#pragma omp parallel for collapse(2) schedule(static) if (groups * members >= PAR_PERTURB_GROUPS)
  for (int32_t z = 0; z < members; z++) {
    for (int64_t g = g0; g < g1; g++) {
      const uint32_t* p = params + z * param_words;
      const float s = bits_f(p[ESF_PERTURB_SCALE]) * sh.multiplier;
      float eps[32];
      normals_store(normals_of(stream8(p[ESF_PERTURB_SEED_LO], p[ESF_PERTURB_SEED_HI],
                                       p[ESF_PERTURB_ITERATION], p[ESF_PERTURB_NOISE], sh.tensor,
                                       (uint32_t)(g * 8))),
                    eps);
      const int64_t e0 = g * 32;
      // Element e is read at θ[src + e] and written at out[dst + e].
      const int64_t src = sh.src - sh.start, dst = sh.dst + z * sh.member_stride - sh.start;
      if (e0 >= sh.start && e0 + 32 <= end) {
        float* o = out + (dst + e0);
        if (theta_bf16) {
          const uint16_t* t16 = (const uint16_t*)theta + (src + e0);
          for (int j = 0; j < 32; j++) o[j] = bits_f((uint32_t)t16[j] << 16) + s * eps[j];
        } else {
          const float* t32 = (const float*)theta + (src + e0);
          for (int j = 0; j < 32; j++) o[j] = t32[j] + s * eps[j];
        }
      } else {
        for (int j = 0; j < 32; j++) {
          const int64_t e = e0 + j;
          if (e >= sh.start && e < end) {
            out[dst + e] = theta_at(theta, theta_bf16, src + e) + s * eps[j];
          }
        }
      }
    }
  }
}

// es_update.ts round_bf16: an f32 value rounded to bf16 stochastically with 16 random bits.
INLINE uint32_t round_bf16(float v, uint32_t r) {
  const uint32_t b = f_bits(v);
  if ((b & 0x7F800000u) == 0x7F800000u) return (b >> 16) | ((b & 0x007FFFFFu) != 0 ? 0x40u : 0);
  return (b + (r & 0xFFFFu)) >> 16;
}

// es_update.ts ROUNDING_STREAM: the Philox member word of the stochastic-rounding bits.
#define ROUNDING_STREAM 0xFFFFFFFFu

// es_update.wgsl: θ += m · Σ_i d_i·ε_i over one shard of a tensor. shard is one record (start,
// count, tensor, numel, multiplier m, …); theta holds elements [start, start + count) (f32, or
// bf16 pairs in u32 words; start and count even). update is words (seed lo, seed hi,
// iteration, n, d_0 … d_{n−1} as f32). ε_i is the noise of (seed, iteration, i, tensor), or,
// when injected is not NULL, row i of injected (n, numel) (0 past numel). Per element the sum
// runs i = 0 .. n−1 in f32 from 0, then is multiplied by m and added to θ once. bf16 θ
// rounds stochastically with the bits of Philox (block, tensor, 0xFFFFFFFF, iteration).
// Measured on Zen 3, n = 30: 510 M normals/s on 1 core, 1040 M on 2 (30 ms per 1M elements).
EXPORT void esf_es_update(const uint32_t* shard, const uint32_t* update, void* theta,
                          int32_t theta_bf16, const float* injected) {
  const shard_rec sh = read_shard(shard);
  if (sh.count <= 0) return;
  const uint32_t k0 = update[ESF_UPDATE_SEED_LO], k1 = update[ESF_UPDATE_SEED_HI];
  const uint32_t iteration = update[ESF_UPDATE_ITERATION], n = update[ESF_UPDATE_COUNT];
  const float* d = (const float*)(update + ESF_UPDATE_WORDS);
  const int64_t end = sh.start + sh.count, g0 = sh.start / 32, g1 = (end - 1) / 32 + 1;
#pragma omp parallel for schedule(static) if ((g1 - g0) * ((int64_t)n + 1) > 16)
  for (int64_t g = g0; g < g1; g++) {
    const int64_t e0 = g * 32;
    float acc[32];
    if (injected) {
      for (int j = 0; j < 32; j++) {
        float a = 0.0f;
        const int64_t e = e0 + j;
        for (uint32_t i = 0; i < n; i++) {
          a = a + d[i] * (e < sh.numel ? injected[(int64_t)i * sh.numel + e] : 0.0f);
        }
        acc[j] = a;
      }
    } else {
      normals8 a = {splat8(0.0f), splat8(0.0f), splat8(0.0f), splat8(0.0f)};
      for (uint32_t i = 0; i < n; i++) {
        const normals8 z = normals_of(stream8(k0, k1, iteration, i, sh.tensor, (uint32_t)(g * 8)));
        a.n0 = a.n0 + d[i] * z.n0;
        a.n1 = a.n1 + d[i] * z.n1;
        a.n2 = a.n2 + d[i] * z.n2;
        a.n3 = a.n3 + d[i] * z.n3;
      }
      normals_store(a, acc);
    }
    for (int j = 0; j < 32; j++) acc[j] = acc[j] * sh.multiplier;
    if (!theta_bf16) {
      float* t = (float*)theta;
      for (int j = 0; j < 32; j++) {
        const int64_t e = e0 + j;
        if (e >= sh.start && e < end) t[e - sh.start] += acc[j];
      }
    } else {
      uint32_t r[32];
      const v8u lane = {0, 1, 2, 3, 4, 5, 6, 7};
      const v8u zero = lane - lane;
      words_store(philox8(lane + (uint32_t)(g * 8), zero + sh.tensor, zero + ROUNDING_STREAM,
                          zero + iteration, k0, k1),
                  r);
      uint32_t* t = (uint32_t*)theta;
      for (int j = 0; j < 32; j += 2) {
        const int64_t e = e0 + j;
        if (e < sh.start || e >= end) continue;
        const int64_t i = (e - sh.start) >> 1;
        const uint32_t word = t[i];
        const float lo = bits_f(word << 16) + acc[j];
        const float hi = bits_f(word & 0xFFFF0000u) + acc[j + 1];
        t[i] = round_bf16(lo, r[j]) | (round_bf16(hi, r[j + 1]) << 16);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Low-rank perturbations (lowrank_factors.wgsl, lowrank_embed.wgsl, kernels/lowrank.ts).

// lowrank_factors.wgsl: rows row0 .. row0+rows of one factor (A or B) for noises noise0 ..
// noise0+span−1. factor is one record of kernels/lowrank.ts createFactorTable: (tensor, row0,
// rows, rank r, row_stride, noise_stride, k_stride, scaled, multiplier as f32 bits, noise0,
// span; span 0: up to the last noise). update_mode 0: params is one perturb record (seed lo,
// seed hi, iteration, member, scale): one noise, index member, scale `scale`; update_mode 1:
// params is the update header and coefficients: n noises, noise i has index i and scale d_i.
// Element (row, k) of noise noise0 + i is counter element row·r + k of the counter word
// `tensor` and goes to out[(row − row0)·row_stride + i·noise_stride + k·k_stride], times
// multiplier and, when scaled, the noise's scale; columns past the last noise get zeros.
EXPORT void esf_lowrank_factors(const uint32_t* factor, const uint32_t* params,
                                int32_t update_mode, float* out) {
  const uint32_t tensor = factor[ESF_FACTOR_TENSOR];
  const int64_t row0 = factor[ESF_FACTOR_ROW0], rows = factor[ESF_FACTOR_ROWS];
  const int64_t rank = factor[ESF_FACTOR_RANK], row_stride = factor[ESF_FACTOR_ROW_STRIDE];
  const int64_t noise_stride = factor[ESF_FACTOR_NOISE_STRIDE];
  const int64_t k_stride = factor[ESF_FACTOR_K_STRIDE];
  const int scaled = factor[ESF_FACTOR_SCALED] != 0;
  const float multiplier = bits_f(factor[ESF_FACTOR_MULTIPLIER]);
  const uint32_t noise0 = factor[ESF_FACTOR_NOISE0];
  const uint32_t count = update_mode ? params[ESF_UPDATE_COUNT] : 1;
  const uint32_t span =
      factor[ESF_FACTOR_SPAN] != 0 ? factor[ESF_FACTOR_SPAN]
                                   : count - (noise0 < count ? noise0 : count);
  const int64_t start = row0 * rank, end = (row0 + rows) * rank;
  if (end <= start || span == 0) return;
  const int64_t g0 = start / 32, g1 = (end - 1) / 32 + 1;
#pragma omp parallel for collapse(2) schedule(static) if ((g1 - g0) * span > 16)
  for (uint32_t i = 0; i < span; i++) {
    for (int64_t g = g0; g < g1; g++) {
      const uint32_t gi = noise0 + i;
      float v[32];
      if (gi < count) {
        float s = multiplier;
        if (scaled) {
          s *= update_mode ? bits_f(params[ESF_UPDATE_WORDS + gi]) : bits_f(params[ESF_PERTURB_SCALE]);
        }
        const uint32_t index = update_mode ? gi : params[ESF_PERTURB_NOISE];
        const uint32_t lo = params[update_mode ? ESF_UPDATE_SEED_LO : ESF_PERTURB_SEED_LO];
        const uint32_t hi = params[update_mode ? ESF_UPDATE_SEED_HI : ESF_PERTURB_SEED_HI];
        const uint32_t it = params[update_mode ? ESF_UPDATE_ITERATION : ESF_PERTURB_ITERATION];
        normals_store(normals_of(stream8(lo, hi, it, index, tensor, (uint32_t)(g * 8))), v);
        for (int j = 0; j < 32; j++) v[j] = v[j] * s;
      } else {
        memset(v, 0, sizeof v);
      }
      for (int j = 0; j < 32; j++) {
        const int64_t e = g * 32 + j;
        if (e < start || e >= end) continue;
        const int64_t row = e / rank, k = e % rank;
        out[(row - row0) * row_stride + (int64_t)i * noise_stride + k * k_stride] = v[j];
      }
    }
  }
}

// lowrank_embed.wgsl: x[r] += a[ids[r]]·Bᵀ, the embedding gather's low-rank correction. ids is
// (R) u32, a is (V, R4) (member m's at m·a_ms, m = r / RM), bt is (R4, H) (member m's at
// m·b_ms), x is (R, H): x[r, c] += Σ_k a[id·R4 + k]·bt[k·H + c], the sum from 0 over k in order.
EXPORT void esf_lowrank_embed(const uint32_t* ids, const float* a, const float* bt, float* x,
                              int64_t R, int64_t H, int64_t R4, int64_t RM, int64_t a_ms,
                              int64_t b_ms) {
#pragma omp parallel for schedule(static) if (R * H * R4 > 65536)
  for (int64_t r = 0; r < R; r++) {
    const int64_t m = r / RM;
    const float* ar = a + m * a_ms + (int64_t)ids[r] * R4;
    const float* bm = bt + m * b_ms;
    float* xr = x + r * H;
    int64_t c = 0;
    for (; c + 32 <= H; c += 32) {
      v8f s0 = splat8(0.0f), s1 = s0, s2 = s0, s3 = s0;
      for (int64_t k = 0; k < R4; k++) {
        const float* b = bm + k * H + c;
        s0 = s0 + ar[k] * load8(b);
        s1 = s1 + ar[k] * load8(b + 8);
        s2 = s2 + ar[k] * load8(b + 16);
        s3 = s3 + ar[k] * load8(b + 24);
      }
      store8(xr + c, load8(xr + c) + s0);
      store8(xr + c + 8, load8(xr + c + 8) + s1);
      store8(xr + c + 16, load8(xr + c + 16) + s2);
      store8(xr + c + 24, load8(xr + c + 24) + s3);
    }
    for (; c < H; c++) {
      float s = 0.0f;
      for (int64_t k = 0; k < R4; k++) s = s + ar[k] * bm[k * H + c];
      xr[c] = xr[c] + s;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Weights checksum (checksum.wgsl, kernels/checksum.ts).

INLINE uint32_t fmix(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  h ^= h >> 16;
  return h;
}

// checksum.wgsl: x is (N) u32 bit patterns (f32, or bf16 pairs) of one shard whose first word
// is word `base` of the tensor; sums is (2) u32, to which the two hashes are added (wrapping):
//   sums[0] += Σ_i fmix(x[i] ^ (g·0x9e3779b9)), sums[1] += Σ_i fmix((x[i] + 0x7f4a7c15) ^
//   fmix(g + 0x165667b1)), g = base + i (u32). Wrapping sums do not depend on the order.
EXPORT void esf_checksum(const uint32_t* x, int64_t N, uint32_t base, uint32_t* sums) {
  uint32_t a = 0, b = 0;
#pragma omp parallel for schedule(static) reduction(+ : a, b) if (N > 65536)
  for (int64_t i = 0; i < N; i++) {
    const uint32_t g = base + (uint32_t)i, bits = x[i];
    a += fmix(bits ^ (g * 0x9e3779b9u));
    b += fmix((bits + 0x7f4a7c15u) ^ fmix(g + 0x165667b1u));
  }
  sums[0] += a;
  sums[1] += b;
}

// ---------------------------------------------------------------------------------------------
// Σ x² of one shard (sum_squares.wgsl, kernels/sum_squares.ts): partials[g] = Σ x[i]² over
// i in [g·E, min(N, (g+1)·E)), each summed in double in index order (as the TypeScript twin does:
// the same bits) and stored as f32. BF16: x holds N/2 words of bf16 pairs, element 2k in the low
// half of word k, and E is even (an odd N's last word holds one element).
EXPORT void esf_sum_squares(const uint32_t* x, int64_t N, int64_t E, int32_t bf16,
                            float* partials, int64_t groups) {
#pragma omp parallel for schedule(static) if (N > 65536)
  for (int64_t g = 0; g < groups; g++) {
    const int64_t end = (g + 1) * E < N ? (g + 1) * E : N;
    double sum = 0.0;
    if (bf16) {
      for (int64_t i = g * E; i < end; i += 2) {
        const uint32_t w = x[i >> 1];
        const double lo = (double)bits_f(w << 16), hi = (double)bits_f(w & 0xFFFF0000u);
        // An odd N ends on a low half; the high half past it is not an element.
        sum += i + 1 < end ? lo * lo + hi * hi : lo * lo;
      }
    } else {
      const float* f = (const float*)x;
      for (int64_t i = g * E; i < end; i++) {
        const double v = (double)f[i];
        sum += v * v;
      }
    }
    partials[g] = (float)sum;
  }
}

// ---------------------------------------------------------------------------------------------
// Decoding with a KV cache (qk_norm_rope_at, kv_cache_write, attention_cache .wgsl,
// kernels/kv_cache.ts). S = sequences, TN = new tokens per sequence, R = S·TN rows; row r is
// token r % TN of sequence r / TN, at position pos[r / TN] + r % TN (also its cache slot).

// qk_norm_rope_at.wgsl, in place: x is (R, NH, D); each head is RMS-normalised with w (D) (member
// m's at m·w_ms, m = r / RM), then rotated by half-split RoPE at position
// min(pos[r / TN] + r % TN, P − 1) with cos and sin (P, D/2), as esf_qk_norm_rope.
EXPORT void esf_qk_norm_rope_at(float* x, const float* w, const float* cos_t, const float* sin_t,
                                const uint32_t* pos, int64_t R, int64_t TN, int64_t NH,
                                int64_t D, int64_t P, float eps, int64_t RM, int64_t w_ms) {
  const int64_t half = D / 2;
#pragma omp parallel for schedule(static) if (R * NH * D >= PAR_STREAM)
  for (int64_t i = 0; i < R * NH; i++) {
    const int64_t row = i / NH;
    int64_t p = (int64_t)pos[row / TN] + row % TN;
    if (p > P - 1) p = P - 1;
    float* xh = x + i * D;
    const float* wr = w + (row / RM) * w_ms;
    const float* c = cos_t + p * half;
    const float* s = sin_t + p * half;
    norm_rope_head(xh, wr, c, s, D, eps);
  }
}

// kv_cache_write.wgsl: k and v are (R, W) with W = NKV·D; kc and vc are (S, SLOTS, W). Row r is
// copied to slot pos[r / TN] + r % TN of sequence r / TN; a slot ≥ SLOTS is skipped.
EXPORT void esf_kv_cache_write(const float* k, const float* v, const uint32_t* pos, float* kc,
                               float* vc, int64_t R, int64_t TN, int64_t SLOTS, int64_t W) {
  for (int64_t r = 0; r < R; r++) {
    const int64_t seq = r / TN, slot = (int64_t)pos[seq] + r % TN;
    if (slot >= SLOTS) continue;
    memcpy(kc + (seq * SLOTS + slot) * W, k + r * W, (size_t)W * sizeof(float));
    memcpy(vc + (seq * SLOTS + slot) * W, v + r * W, (size_t)W * sizeof(float));
  }
}

// attention_cache.wgsl: q is (R, NH, D), kc and vc are (S, SLOTS, NKV, D), out is (R, NH, D).
// Query (r, h) at position p reads kv head h / (NH / NKV) of its sequence over slots
// 0..min(p, SLOTS − 1), in order, with the online softmax of esf_attention: scores (q·scale)·k
// (Σ_j in lanes j mod 8, then the fixed tree), the running maximum from −3e38, the sum and the
// accumulator rescaled by e^(m − score) when a score exceeds it, then p = e^(score − m) added.
EXPORT void esf_attention_cache(const float* q, const float* kc, const float* vc,
                                const uint32_t* pos, float* out, int64_t R, int64_t TN,
                                int64_t NH, int64_t NKV, int64_t D, int64_t SLOTS, float scale) {
  const int64_t group = NH / NKV;
#pragma omp parallel if (R * NH > 1 && R * NH * SLOTS * D > 65536)
  {
    float* qs = alloc_floats(2 * D);
    float* acc = qs + D;
#pragma omp for schedule(dynamic, 4)
    for (int64_t i = 0; i < R * NH; i++) {
      const int64_t h = i % NH, row = i / NH, seq = row / TN, g = h / group;
      int64_t last = (int64_t)pos[seq] + row % TN;
      if (last > SLOTS - 1) last = SLOTS - 1;
      const float* qi = q + i * D;
      for (int64_t j = 0; j < D; j++) {
        qs[j] = qi[j] * scale;
        acc[j] = 0.0f;
      }
      float m = -3.0e38f, l = 0.0f;
      for (int64_t s = 0; s <= last; s++) {
        const float* kr = kc + ((seq * SLOTS + s) * NKV + g) * D;
        const float* vr = vc + ((seq * SLOTS + s) * NKV + g) * D;
        v8f d8 = splat8(0.0f);
        int64_t j = 0;
        for (; j + 8 <= D; j += 8) d8 = d8 + load8(qs + j) * load8(kr + j);
        float lanes[8];
        store8(lanes, d8);
        for (int t = 0; j < D; j++, t++) lanes[t] = lanes[t] + qs[j] * kr[j];
        const float sc = tree8(lanes);
        if (sc > m) {
          const float c = exp_f(m - sc);
          l = l * c;
          for (j = 0; j < D; j++) acc[j] = acc[j] * c;
          m = sc;
        }
        const float p = exp_f(sc - m);
        l = l + p;
        for (j = 0; j < D; j++) acc[j] = acc[j] + p * vr[j];
      }
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      float* o = out + i * D;
      for (int64_t j = 0; j < D; j++) o[j] = acc[j] * inv;
    }
    free(qs);
  }
}
