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

#ifdef LIGHTSR_MVEC /* glibc >= 2.35: 8-wide erff / expf in libmvec, used by the vectorised loops */
#pragma omp declare simd simdlen(8) notinbranch
float erff(float);
#pragma omp declare simd simdlen(8) notinbranch
float expf(float);
#endif

typedef long long i64;
typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));     /* unaligned float loads / stores */
typedef uint16_t u16x8 __attribute__((vector_size(16), aligned(2))); /* unaligned bfloat16 vectors */
typedef uint32_t u32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));

static inline v8 ld_f32(const float *p) { return *(const v8u *)p; }
static inline void st_f32(float *p, v8 v) { *(v8u *)p = v; }
static inline float lds_f32(const float *p) { return *p; }
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

#if defined(__AVX512BF16__) && defined(__AVX512VL__)
static inline void st_bf16(uint16_t *p, v8 f) /* one instruction: round to nearest even, NaN stays NaN */
{
    _mm_storeu_si128((__m128i *)p, (__m128i)_mm256_cvtneps_pbh((__m256)f));
}
#else
static inline void st_bf16(uint16_t *p, v8 f)
{
    u32x8 w;
    memcpy(&w, &f, sizeof w);
    const u32x8 rounded = (w + 0x7fffu + ((w >> 16) & 1u)) >> 16;
    const i32x8 nan = (i32x8)(f != f);
    const u32x8 out = (rounded & ~(u32x8)nan) | ((u32x8)nan & 0x7fc0u);
    *(u16x8 *)p = __builtin_convertvector(out, u16x8);
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

/* GELU(v) = v * Phi(v) (exact, erf form, as torch.nn.functional.gelu) and its derivative
 * Phi(v) + v * phi(v), elementwise over n values (vectorised with libmvec where built with it). */
static inline void gelu_and_grad(const float *restrict v, float *restrict g, float *restrict dg, i64 n)
{
#pragma omp simd
    for (i64 e = 0; e < n; ++e) {
        const float x = v[e];
        const float phi = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
        g[e] = x * phi;
        if (dg)
            dg[e] = phi + x * 0.39894228040143268f * expf(-0.5f * x * x);
    }
}

static inline void gelu_only(const float *restrict v, float *restrict g, i64 n)
{
#pragma omp simd
    for (i64 e = 0; e < n; ++e)
        g[e] = v[e] * (0.5f * (1.0f + erff(v[e] * 0.70710678118654752f)));
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
