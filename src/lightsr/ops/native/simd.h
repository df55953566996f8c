/* Shared helpers of lightsr's native kernels: 8-float vectors (GCC / clang vector extensions,
 * AVX with -mavx2 -mfma, SSE otherwise), float32 and bfloat16 loads and stores, the exact GELU.
 *
 * bfloat16 values are stored as uint16_t (the upper half of a float32); loads widen them to
 * float32 and stores round to the nearest even value, as PyTorch does (NaN stays NaN). All
 * arithmetic is float32.
 */
#ifndef LIGHTSR_SIMD_H
#define LIGHTSR_SIMD_H

#include <math.h>
#include <stdint.h>
#include <string.h>

typedef long long i64;
typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));     /* unaligned float loads / stores */
typedef uint16_t u16x8 __attribute__((vector_size(16), aligned(2))); /* unaligned bfloat16 vectors */
typedef uint32_t u32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));

static inline v8 ld_f32(const float *p) { return *(const v8u *)p; }
static inline void st_f32(float *p, v8 v) { *(v8u *)p = v; }
static inline float lds_f32(const float *p) { return *p; }

/* eight vectors to o, o + s, ..., o + 7 s (eight output pixels of a channel block) */
static inline void st_f32x8(float *o, i64 s, v8 a0, v8 a1, v8 a2, v8 a3, v8 a4, v8 a5, v8 a6, v8 a7)
{
    st_f32(o, a0), st_f32(o + s, a1), st_f32(o + 2 * s, a2), st_f32(o + 3 * s, a3);
    st_f32(o + 4 * s, a4), st_f32(o + 5 * s, a5), st_f32(o + 6 * s, a6), st_f32(o + 7 * s, a7);
}
static inline void sts_f32(float *p, float v) { *p = v; }

#ifdef __AVX2__
#include <immintrin.h>

static inline v8 ld_bf16(const uint16_t *p) /* one widening load and a shift (GCC's generic form takes four) */
{
    return (v8)_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
#else
static inline v8 ld_bf16(const uint16_t *p)
{
    const u32x8 w = __builtin_convertvector(*(const u16x8 *)p, u32x8) << 16;
    v8 f;
    memcpy(&f, &w, sizeof f);
    return f;
}
#endif

static inline void st_bf16(uint16_t *p, v8 f)
{
    u32x8 w;
    memcpy(&w, &f, sizeof w);
    const u32x8 rounded = (w + 0x7fffu + ((w >> 16) & 1u)) >> 16;
    const i32x8 nan = (i32x8)(f != f);
    const u32x8 out = (rounded & ~(u32x8)nan) | ((u32x8)nan & 0x7fc0u);
    *(u16x8 *)p = __builtin_convertvector(out, u16x8);
}

#if defined(__x86_64__) && defined(__AVX2__) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 10))
/* st_bf16 in one instruction (vcvtneps2bf16: nearest even, NaN stays NaN, subnormal values become
 * zero) for functions compiled for the AVX512-BF16 target (LIGHTSR_BF16_TARGET) and called only where
 * __builtin_cpu_supports("avx512bf16"); the library itself stays AVX2 code. */
#define LIGHTSR_BF16_CVT 1
#define LIGHTSR_BF16_TARGET __attribute__((target("avx512f,avx512vl,avx512bf16")))
LIGHTSR_BF16_TARGET static inline void st_bf16_cvt(uint16_t *p, v8 f)
{
    _mm_storeu_si128((__m128i *)p, (__m128i)_mm256_cvtneps_pbh((__m256)f));
}
#endif

static inline float lds_bf16(const uint16_t *p)
{
    const uint32_t w = (uint32_t)*p << 16;
    float f;
    memcpy(&f, &w, sizeof f);
    return f;
}

static inline void sts_bf16(uint16_t *p, float f)
{
    uint32_t w;
    memcpy(&w, &f, sizeof w);
    *p = f != f ? (uint16_t)0x7fc0 : (uint16_t)((w + 0x7fffu + ((w >> 16) & 1u)) >> 16);
}

/* min / max of vectors that keep a NaN of their first argument (comparisons with NaN are false). */
static inline v8 vmax_keep_nan(v8 x, v8 lo)
{
    return (v8)(((i32x8)(x < lo) & (i32x8)lo) | (~(i32x8)(x < lo) & (i32x8)x));
}

static inline v8 vmin_keep_nan(v8 x, v8 hi)
{
    return (v8)(((i32x8)(x > hi) & (i32x8)hi) | (~(i32x8)(x > hi) & (i32x8)x));
}

/* erf(t) = t P(t^2) / Q(t^2) on [-3.92, 3.92] (clamped outside, where erf is +-1 in float32): a (5, 5)
 * rational least-squares fit of erf on [0, 3.92] (float64, iteratively reweighted towards the largest
 * errors; max abs error 1.6e-8 in float64, 3.6e-7 in float32 evaluation over [-6, 6]), the result
 * clamped to [-1, 1]; NaN stays NaN. Ten FMAs and a division instead of libmvec's vector erff: on a
 * Zen 4 EPYC LGUN's scale_gelu went from 0.82x to 1.29-1.43x of aten's F.gelu(x * s) (two runs of
 * benchmarks/native_speed.py --kernels; its GELU-gate row is within that VM's noise, docs/speed.md).
 * Also the training backward's GELU derivative (gelu_grad8). */
static inline v8 erf_rational(v8 t)
{
    const v8 one = (v8){0} + 1.0f, lim = (v8){0} + 3.92f;
    const v8 a = vmin_keep_nan(vmax_keep_nan(t, -lim), lim);
    const v8 z = a * a;
    const v8 p = ((((2.034771723996677e-06f * z + 0.0002874786525558398f) * z + 0.003868219877449335f) * z
                   + 0.05306012760488604f) * z + 0.19276126444529215f) * z + 1.1283790224104726f;
    const v8 q = ((((3.807099945720046e-05f * z + 0.0011880928826488292f) * z + 0.015172069538794604f) * z
                   + 0.11508348002524435f) * z + 0.504161889495661f) * z + 1.0f;
    return vmin_keep_nan(vmax_keep_nan(a * p / q, -one), one);
}

/* GELU (exact form, erf by erf_rational: within 4e-7 of x Phi(x) relative to |x|) of 8 values; of
 * one value by libm's erff (the tails of the vector loops) */
static inline v8 gelu8(v8 x) { return x * (0.5f + 0.5f * erf_rational(x * 0.70710678118654752f)); }
static inline float gelu1(float x) { return x * (0.5f * (1.0f + erff(x * 0.70710678118654752f))); }

/* e^x of 8 values x <= 0 (NaN stays NaN): 2^n e^r with n = round(x / ln 2) and r = x - n ln 2 in
 * [-ln 2 / 2, ln 2 / 2] (ln 2 in two parts, Cody-Waite), e^r by its degree-7 Taylor polynomial (relative
 * error below 1e-8 there, a few float32 ulps in all); x is clamped to -87 (e^-87 ~ 1.6e-38, the
 * smallest normal scale). Eight FMAs and no libm call. */
static inline v8 exp_nonpositive8(v8 x)
{
    const v8 xc = vmax_keep_nan(x, (v8){0} - 87.0f);
    const v8 magic = (v8){0} + 12582912.0f; /* 1.5 * 2^23: adding and subtracting it rounds to an integer */
    const v8 n = (xc * 1.44269504088896341f + magic) - magic;
    const v8 r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;
    const v8 p = ((((((1.98412698e-4f * r + 1.38888889e-3f) * r + 8.33333333e-3f) * r + 4.16666667e-2f) * r
                   + 1.66666667e-1f) * r + 0.5f) * r + 1.0f) * r + 1.0f;
    return p * (v8)((__builtin_convertvector(n, i32x8) + 127) << 23);
}

/* The derivative of GELU (exact, erf form, as torch.nn.functional.gelu), Phi(x) + x phi(x), of 8
 * values by erf_rational and exp_nonpositive8; *g = GELU(x) = x Phi(x). */
static inline v8 gelu_grad8(v8 x, v8 *g)
{
    const v8 phi = 0.5f + 0.5f * erf_rational(x * 0.70710678118654752f);
    *g = x * phi;
    return phi + x * 0.39894228040143268f * exp_nonpositive8(-0.5f * x * x);
}

/* the same of one value by libm's erff / expf (the tails of the vector loops) */
static inline float gelu_grad1(float x, float *g)
{
    const float phi = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
    *g = x * phi;
    return phi + x * 0.39894228040143268f * expf(-0.5f * x * x);
}

/* first / one-past-last tap k in [0, K) whose sample o + k * D - P lies in [0, N) */
static inline void tap_range(i64 o, i64 P, i64 D, i64 K, i64 N, i64 *lo, i64 *hi)
{
    i64 a = 0, b = K;
    while (a < K && o + a * D - P < 0)
        ++a;
    while (b > a && o + (b - 1) * D - P >= N)
        --b;
    *lo = a;
    *hi = b;
}

#endif
