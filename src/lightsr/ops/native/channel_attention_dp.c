/* The transposed (channel) attention of wide heads (d = 16, 32, 48 or 64 channels: LGUN's DGSA, one
 * head of 64) at inference on bfloat16 storage, with the AVX512-BF16 dot-product instruction
 * (vdpbf16ps: fp32 += a0 b0 + a1 b1 on pairs of bfloat16, products exact, sums in float32). The
 * entry points return 3 on CPUs without AVX512-BF16 (lightsr_ca_dp_supported() says which) and where
 * the compiler cannot target it.
 *
 * qkv is (B, H, W, 3C) pixel rows: q = channels [0, C), k = [C, 2C), v = [2C, 3C); heads of d channels.
 *
 *   lightsr_ca_gram_dp_bf16   for tasks t in [t0, t1), t = b * nblk + n, the pixels p of image b's rows
 *                             [n R, min(H, (n + 1) R)) (nblk = ceil(H / R)):
 *                             gram[t][h][i][j] = sum_p q[p][dh + i] k[p][dh + j]
 *                             ss[t][c] = sum_p q[p][c]^2 (c < C), k[p][c - C]^2 (C <= c < 2C)
 *                             (the caller sums the tasks of each image in a fixed order, so the result
 *                             does not depend on the number of threads)
 *   lightsr_ca_apply_dp_bf16  out[b][y][x][dh + c] = bf16( sum_j A[b][h][c][j] v[b][y][x][dh + j] )
 *                             with the float32 maps A rounded to bfloat16 (as autocast rounds the inputs
 *                             of a product; LGUN's Set5 PSNR in bf16 moved by 0.0003 dB against keeping
 *                             A to 16 bits as two bfloat16 parts at twice the work), laid out as pairs
 *                             along j: a[b][h][p][c] = (A[c][2p], A[c][2p+1]).
 *
 * The reduction of the Gram matrix runs over pixels, so pairs of neighbouring pixels are interleaved
 * into 32-bit lanes first (q's into a small table read by broadcast, k's into vectors of 16 columns),
 * a block of 32 pairs at a time; then four rows of the d x d matrix accumulate in registers over the
 * block. The reduction of A v runs over channels, which already are pairs in a pixel row: one
 * broadcast per pair of v and four pixels at a time. On a Zen 4 EPYC the float32 path of this
 * attention (a float32 copy of q, k, v, a product and a sum for the norms and two BLAS products) took
 * 12% of LGUN's bf16 inference.
 */
#include <stdlib.h>

#include "simd.h"

typedef struct {
    i64 B, H, W, C, d, R;
} cadp_geom;

int lightsr_ca_dp_supported(void)
{
#ifdef LIGHTSR_BF16_CVT
    return __builtin_cpu_supports("avx512bf16") ? 1 : 0;
#else
    return 0;
#endif
}

#ifdef LIGHTSR_BF16_CVT
#define DP_TARGET __attribute__((target("avx512f,avx512vl,avx512bw,avx512bf16")))
#define DP_INLINE DP_TARGET static inline __attribute__((always_inline))
#define PAIRS 32 /* pixel pairs per block of the Gram kernel */

static const uint16_t zero_row[64];

/* 16 lanes (a[l] in the low, b[l] in the high half) from 16 bfloat16 values of two rows */
DP_INLINE __m512i pair16(const uint16_t *a, const uint16_t *b)
{
    const __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)a));
    const __m512i hi = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)b));
    return _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
}

DP_INLINE __m512 dp(__m512 acc, __m512i a, __m512i b)
{
    return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}

/* rows i0 .. i0 + 3 of one head's Gram matrix g (d x d) += the block's np pixel pairs */
DP_INLINE void gram_rows4(const uint32_t *qp, const uint32_t *kp, i64 np, i64 d, float *g, i64 i0, const int JB)
{
    __m512 acc[4][4];
    for (int r = 0; r < 4; ++r)
        for (int jb = 0; jb < JB; ++jb)
            acc[r][jb] = _mm512_loadu_ps(g + (i0 + r) * d + 16 * jb);
    for (i64 m = 0; m < np; ++m) {
        __m512i kv[4];
        for (int jb = 0; jb < JB; ++jb)
            kv[jb] = _mm512_loadu_si512(kp + (m * JB + jb) * 16);
        for (int r = 0; r < 4; ++r) {
            const __m512i qv = _mm512_set1_epi32((int)qp[m * d + i0 + r]);
            for (int jb = 0; jb < JB; ++jb)
                acc[r][jb] = dp(acc[r][jb], qv, kv[jb]);
        }
    }
    for (int r = 0; r < 4; ++r)
        for (int jb = 0; jb < JB; ++jb)
            _mm512_storeu_ps(g + (i0 + r) * d + 16 * jb, acc[r][jb]);
}

DP_TARGET static void gram_head(const uint32_t *qp, const uint32_t *kp, i64 np, i64 d, float *g)
{
    for (i64 i0 = 0; i0 < d; i0 += 4) {
        switch (d / 16) {
        case 1: gram_rows4(qp, kp, np, d, g, i0, 1); break;
        case 2: gram_rows4(qp, kp, np, d, g, i0, 2); break;
        case 3: gram_rows4(qp, kp, np, d, g, i0, 3); break;
        default: gram_rows4(qp, kp, np, d, g, i0, 4); break;
        }
    }
}

/* the pair tables of head h for the n pixels of a block starting at px (one pixel row); adds the
 * sums of squares of q and k into sq / sk (d floats each) */
DP_TARGET static void pair_tables(const uint16_t *px, i64 n, i64 C, i64 h, i64 d, uint32_t *qp, uint32_t *kp,
                                  float *sq, float *sk)
{
    const i64 JB = d / 16;
    __m512 aq[4], ak[4];
    for (int jb = 0; jb < JB; ++jb)
        aq[jb] = _mm512_loadu_ps(sq + 16 * jb), ak[jb] = _mm512_loadu_ps(sk + 16 * jb);
    for (i64 m = 0; 2 * m < n; ++m) {
        const uint16_t *q0 = px + 2 * m * 3 * C + h * d;
        const uint16_t *q1 = 2 * m + 1 < n ? q0 + 3 * C : zero_row, *k1 = 2 * m + 1 < n ? q0 + 4 * C : zero_row;
        for (int jb = 0; jb < JB; ++jb) {
            const __m512i qv = pair16(q0 + 16 * jb, q1 + 16 * jb), kv = pair16(q0 + C + 16 * jb, k1 + 16 * jb);
            _mm512_storeu_si512(qp + m * d + 16 * jb, qv);
            _mm512_storeu_si512(kp + (m * JB + jb) * 16, kv);
            aq[jb] = dp(aq[jb], qv, qv);
            ak[jb] = dp(ak[jb], kv, kv);
        }
    }
    for (int jb = 0; jb < JB; ++jb)
        _mm512_storeu_ps(sq + 16 * jb, aq[jb]), _mm512_storeu_ps(sk + 16 * jb, ak[jb]);
}

DP_TARGET static int gram_dp(const uint16_t *qkv, float *gram, float *ss, const cadp_geom *g, i64 t0, i64 t1)
{
    const i64 C = g->C, d = g->d, heads = C / d, W = g->W, row = W * 3 * C, nblk = (g->H + g->R - 1) / g->R;
    uint32_t *qp = (uint32_t *)malloc(sizeof(uint32_t) * (size_t)(PAIRS * d * 2));
    if (!qp)
        return 2;
    uint32_t *kp = qp + PAIRS * d;
    memset(gram + t0 * heads * d * d, 0, sizeof(float) * (size_t)((t1 - t0) * heads * d * d));
    memset(ss + t0 * 2 * C, 0, sizeof(float) * (size_t)((t1 - t0) * 2 * C));
    for (i64 t = t0; t < t1; ++t) {
        const i64 b = t / nblk, y0 = (t % nblk) * g->R, y1 = y0 + g->R < g->H ? y0 + g->R : g->H;
        float *gb = gram + t * heads * d * d, *sb = ss + t * 2 * C;
        for (i64 r = b * g->H + y0; r < b * g->H + y1; ++r)
            for (i64 x0 = 0; x0 < W; x0 += 2 * PAIRS) {
            const i64 n = W - x0 < 2 * PAIRS ? W - x0 : 2 * PAIRS;
                for (i64 h = 0; h < heads; ++h) {
                    pair_tables(qkv + r * row + x0 * 3 * C, n, C, h, d, qp, kp, sb + h * d, sb + C + h * d);
                    gram_head(qp, kp, (n + 1) / 2, d, gb + h * d * d);
                }
            }
    }
    free(qp);
    return 0;
}

/* NPX output pixels (stride os) of one head from their v (stride vs): sum_p pair(v) . a[p] */
DP_INLINE void apply_px(const uint16_t *v, i64 vs, const uint32_t *a, i64 d, uint16_t *o, i64 os, const int NPX,
                        const int JB)
{
    __m512 acc[4][4];
    for (int px = 0; px < NPX; ++px)
        for (int jb = 0; jb < JB; ++jb)
            acc[px][jb] = _mm512_setzero_ps();
    for (i64 p = 0; p < d / 2; ++p) {
        __m512i ap[4];
        for (int jb = 0; jb < JB; ++jb)
            ap[jb] = _mm512_loadu_si512(a + p * d + 16 * jb);
        for (int px = 0; px < NPX; ++px) {
            uint32_t pair;
            memcpy(&pair, v + px * vs + 2 * p, sizeof pair);
            const __m512i bv = _mm512_set1_epi32((int)pair);
            for (int jb = 0; jb < JB; ++jb)
                acc[px][jb] = dp(acc[px][jb], bv, ap[jb]);
        }
    }
    for (int px = 0; px < NPX; ++px)
        for (int jb = 0; jb < JB; ++jb)
            _mm256_storeu_si256((__m256i *)(o + px * os + 16 * jb), (__m256i)_mm512_cvtneps_pbh(acc[px][jb]));
}

#define APPLY_ROW(JB)                                                                                        \
    do {                                                                                                     \
        i64 x = 0;                                                                                           \
        for (; x + 4 <= W; x += 4)                                                                           \
            apply_px(vr + x * 3 * C, 3 * C, a, d, orow + x * C, C, 4, JB);                                   \
        for (; x < W; ++x)                                                                                   \
            apply_px(vr + x * 3 * C, 3 * C, a, d, orow + x * C, C, 1, JB);                                   \
    } while (0)

DP_TARGET static int apply_dp(const uint16_t *qkv, const uint32_t *at, uint16_t *out, const cadp_geom *g, i64 r0,
                              i64 r1)
{
    const i64 C = g->C, d = g->d, heads = C / d, W = g->W;
    for (i64 r = r0; r < r1; ++r) {
        const i64 b = r / g->H;
        for (i64 h = 0; h < heads; ++h) {
            const uint16_t *vr = qkv + r * W * 3 * C + 2 * C + h * d;
            const uint32_t *a = at + (b * heads + h) * d * d / 2;
            uint16_t *orow = out + r * W * C + h * d;
            switch (d / 16) {
            case 1: APPLY_ROW(1); break;
            case 2: APPLY_ROW(2); break;
            case 3: APPLY_ROW(3); break;
            default: APPLY_ROW(4); break;
            }
        }
    }
    return 0;
}
#endif

static int dp_geometry_ok(const cadp_geom *g)
{
    return g->d >= 16 && g->d <= 64 && g->d % 16 == 0 && g->C % g->d == 0 && g->R >= 1;
}

int lightsr_ca_gram_dp_bf16(const uint16_t *qkv, float *gram, float *ss, const cadp_geom *g, i64 t0, i64 t1)
{
    if (!dp_geometry_ok(g))
        return 1;
#ifdef LIGHTSR_BF16_CVT
    if (__builtin_cpu_supports("avx512bf16"))
        return gram_dp(qkv, gram, ss, g, t0, t1);
#endif
    (void)qkv, (void)gram, (void)ss, (void)t0, (void)t1;
    return 3;
}

int lightsr_ca_apply_dp_bf16(const uint16_t *qkv, const uint32_t *at, uint16_t *out, const cadp_geom *g, i64 r0,
                             i64 r1)
{
    if (!dp_geometry_ok(g))
        return 1;
#ifdef LIGHTSR_BF16_CVT
    if (__builtin_cpu_supports("avx512bf16"))
        return apply_dp(qkv, at, out, g, r0, r1);
#endif
    (void)qkv, (void)at, (void)out, (void)r0, (void)r1;
    return 3;
}
