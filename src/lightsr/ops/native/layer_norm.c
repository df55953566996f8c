/* LayerNorm over the channels of dense channels-last rows (CPU), float32 or bfloat16 storage:
 *
 *   y[r, c] = (x[r, c] - mean_r) / sqrt(var_r + eps) * w[c] + b[c]
 *
 * mean and biased variance over the C channels of each row r (a pixel), two passes over the row
 * (sum, then the sum of squared deviations), as the reference formula. aten's kernel spends most of
 * its time on per-row set-up for rows this short (48-90 channels); here a row is a handful of
 * vectors kept in the L1 cache between its three passes. w and b are float32, all arithmetic is
 * float32; the bfloat16 entry point reads and writes bfloat16 rows (aten's result for a bfloat16
 * input with float32 weights: the float32 value rounded to the nearest even), the f32_bf16 one reads
 * float32 rows and writes them rounded to bfloat16. Rows [r0, r1);
 * return code 0.
 */
#include <string.h>

#include "simd.h"

typedef struct {
    i64 C;
    double eps;
} ln_geom;

static inline float hsum(v8 v)
{
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

/* One row: xr float32 (C values), the result stored by ST / STS into yr; KEEP, a statement, may read
 * the row's mean and rstd. */
#define LN_ROW(yr, ST, STS) LN_ROW_KEEP(yr, ST, STS, (void)0)
#define LN_ROW_KEEP(yr, ST, STS, KEEP)                                                                         \
    do {                                                                                                       \
        v8 s = {0};                                                                                            \
        for (i64 c = 0; c < CV; c += 8)                                                                        \
            s += ld_f32(xr + c);                                                                               \
        float sum = hsum(s);                                                                                   \
        for (i64 c = CV; c < C; ++c)                                                                           \
            sum += xr[c];                                                                                      \
        const float mean = sum * inv_c;                                                                        \
        const v8 m = (v8){0} + mean;                                                                           \
        v8 q = {0};                                                                                            \
        for (i64 c = 0; c < CV; c += 8) {                                                                      \
            const v8 d = ld_f32(xr + c) - m;                                                                   \
            q += d * d;                                                                                        \
        }                                                                                                      \
        float var = hsum(q);                                                                                   \
        for (i64 c = CV; c < C; ++c)                                                                           \
            var += (xr[c] - mean) * (xr[c] - mean);                                                            \
        const float rstd = 1.0f / sqrtf(var * inv_c + eps);                                                    \
        KEEP;                                                                                                  \
        const v8 rs = (v8){0} + rstd;                                                                          \
        for (i64 c = 0; c < CV; c += 8)                                                                        \
            ST(yr + c, (ld_f32(xr + c) - m) * rs * ld_f32(w + c) + ld_f32(b + c));                             \
        for (i64 c = CV; c < C; ++c)                                                                           \
            STS(yr + c, (xr[c] - mean) * rstd * w[c] + b[c]);                                                  \
    } while (0)

int lightsr_ln_rows_f32(const float *x, const float *w, const float *b, float *y, const ln_geom *g, i64 r0, i64 r1)
{
    const i64 C = g->C, CV = C - C % 8;
    const float eps = (float)g->eps, inv_c = 1.0f / (float)C;
    for (i64 r = r0; r < r1; ++r) {
        const float *xr = x + r * C;
        LN_ROW(y + r * C, st_f32, sts_f32);
    }
    return 0;
}

/* bfloat16 rows: each row is widened once into a float32 buffer, then as above (its three passes
 * would otherwise widen every vector three times). Rows of up to LN_BUF channels (return code 1
 * beyond: the caller checks C first; the models have 48-90). */
enum { LN_BUF = 1024 };

/* The body of the bfloat16 entry point, for a store function STORE (the float32 -> bfloat16 rounding). */
#define LN_ROWS_BF16(STORE, STORES)                                                                            \
    const i64 C = g->C, CV = C - C % 8;                                                                        \
    const float eps = (float)g->eps, inv_c = 1.0f / (float)C;                                                  \
    float buf[LN_BUF];                                                                                         \
    if (C > LN_BUF)                                                                                            \
        return 1;                                                                                              \
    const float *xr = buf;                                                                                     \
    for (i64 r = r0; r < r1; ++r) {                                                                            \
        const uint16_t *src = x + r * C;                                                                       \
        for (i64 c = 0; c < CV; c += 8)                                                                        \
            st_f32(buf + c, ld_bf16(src + c));                                                                 \
        for (i64 c = CV; c < C; ++c)                                                                           \
            buf[c] = lds_bf16(src + c);                                                                        \
        LN_ROW(y + r * C, STORE, STORES);                                                                      \
    }                                                                                                          \
    return 0

/* float32 rows in, bfloat16 rows out (CPU bf16 autocast: a float32 residual stream, LAMNet's, whose
 * normalised rows every consumer would round to bfloat16 anyway). */
#define LN_ROWS_F32_TO_BF16(STORE, STORES)                                                                     \
    const i64 C = g->C, CV = C - C % 8;                                                                        \
    const float eps = (float)g->eps, inv_c = 1.0f / (float)C;                                                  \
    for (i64 r = r0; r < r1; ++r) {                                                                            \
        const float *xr = x + r * C;                                                                           \
        LN_ROW(y + r * C, STORE, STORES);                                                                      \
    }                                                                                                          \
    return 0

/* An entry point NAME writing bfloat16 rows from TX rows by BODY. On CPUs with AVX512-BF16 (checked at
 * run time) the rounding is st_bf16_cvt's one instruction instead of about a dozen integer operations,
 * which dominated this kernel (native_speed.py --kernels: 2.6 -> 1.7 ms on a 48 x 180 x 320 map,
 * float32 rows 1.2 ms); only NAME_cvt is compiled for the AVX-512 target (AVX-512 code generation
 * made the depth-wise kernels slower on a Zen 4 EPYC). */
#ifdef LIGHTSR_BF16_CVT
#define LN_BF16_ENTRY(NAME, TX, BODY)                                                                          \
    LIGHTSR_BF16_TARGET static int NAME##_cvt(const TX *x, const float *w, const float *b, uint16_t *y,         \
                                              const ln_geom *g, i64 r0, i64 r1)                                \
    {                                                                                                          \
        BODY(st_bf16_cvt, sts_bf16);                                                                           \
    }                                                                                                          \
    int NAME(const TX *x, const float *w, const float *b, uint16_t *y, const ln_geom *g, i64 r0, i64 r1)       \
    {                                                                                                          \
        if (__builtin_cpu_supports("avx512bf16"))                                                              \
            return NAME##_cvt(x, w, b, y, g, r0, r1);                                                          \
        BODY(st_bf16, sts_bf16);                                                                               \
    }
#else
#define LN_BF16_ENTRY(NAME, TX, BODY)                                                                          \
    int NAME(const TX *x, const float *w, const float *b, uint16_t *y, const ln_geom *g, i64 r0, i64 r1)       \
    {                                                                                                          \
        BODY(st_bf16, sts_bf16);                                                                               \
    }
#endif

LN_BF16_ENTRY(lightsr_ln_rows_bf16, uint16_t, LN_ROWS_BF16)
LN_BF16_ENTRY(lightsr_ln_rows_f32_bf16, float, LN_ROWS_F32_TO_BF16)

/* ---- float32 training ---------------------------------------------------------------------------
 *
 * lightsr_ln_train_f32: the forward above, keeping each row's mean and 1 / std in stats[2 r], [2 r + 1].
 * lightsr_ln_backward_f32: with xh = (x - mean) rstd and gh = gy w (per row, over its C channels),
 *
 *   gx = rstd (gh - mean_c(gh) - xh mean_c(gh xh)) [+ gres],   gw += gy xh,   gb += gy,
 *
 * (gres, when not NULL: the gradient of a pre-norm block's residual, x itself, added in the same pass)
 * for bands [k0, k1) of LN_BAND rows each (the last one shorter): band k adds its rows' gw / gb terms,
 * in row order, into part[k] (2 C floats: gw then gb), which the caller sums over the bands in band
 * order, so the result does not depend on how the bands were split between threads. */
enum { LN_BAND = 256 };

int lightsr_ln_train_f32(const float *x, const float *w, const float *b, float *y, float *stats, const ln_geom *g,
                         i64 r0, i64 r1)
{
    const i64 C = g->C, CV = C - C % 8;
    const float eps = (float)g->eps, inv_c = 1.0f / (float)C;
    for (i64 r = r0; r < r1; ++r) {
        const float *xr = x + r * C;
        LN_ROW_KEEP(y + r * C, st_f32, sts_f32, (stats[2 * r] = mean, stats[2 * r + 1] = rstd));
    }
    return 0;
}

int lightsr_ln_backward_f32(const float *gy, const float *x, const float *w, const float *stats, const float *gres,
                            float *gx, float *part, const ln_geom *g, i64 rows, i64 k0, i64 k1)
{
    const i64 C = g->C, CV = C - C % 8;
    const float inv_c = 1.0f / (float)C;
    for (i64 k = k0; k < k1; ++k) {
        float *gw = part + 2 * C * k, *gb = gw + C;
        memset(gw, 0, sizeof(float) * (size_t)(2 * C));
        const i64 end = (k + 1) * LN_BAND < rows ? (k + 1) * LN_BAND : rows;
        for (i64 r = k * LN_BAND; r < end; ++r) {
            const float *xr = x + r * C, *gr = gy + r * C;
            float *out = gx + r * C;
            const float mean = stats[2 * r], rstd = stats[2 * r + 1];
            const v8 m = (v8){0} + mean, rs = (v8){0} + rstd;
            v8 s1 = {0}, s2 = {0};
            for (i64 c = 0; c < CV; c += 8) {
                const v8 xh = (ld_f32(xr + c) - m) * rs, gv = ld_f32(gr + c), gh = gv * ld_f32(w + c);
                s1 += gh;
                s2 += gh * xh;
                st_f32(gw + c, ld_f32(gw + c) + gv * xh);
                st_f32(gb + c, ld_f32(gb + c) + gv);
            }
            float a = hsum(s1), bsum = hsum(s2);
            for (i64 c = CV; c < C; ++c) {
                const float xh = (xr[c] - mean) * rstd, gh = gr[c] * w[c];
                a += gh;
                bsum += gh * xh;
                gw[c] += gr[c] * xh;
                gb[c] += gr[c];
            }
            a *= inv_c;
            bsum *= inv_c;
            const v8 av = (v8){0} + a, bv = (v8){0} + bsum;
            if (gres) { /* the pre-norm block's residual gradient joins in the same pass */
                const float *rr = gres + r * C;
                for (i64 c = 0; c < CV; c += 8) {
                    const v8 xh = (ld_f32(xr + c) - m) * rs;
                    st_f32(out + c, rs * (ld_f32(gr + c) * ld_f32(w + c) - av - xh * bv) + ld_f32(rr + c));
                }
                for (i64 c = CV; c < C; ++c)
                    out[c] = rstd * (gr[c] * w[c] - a - (xr[c] - mean) * rstd * bsum) + rr[c];
                continue;
            }
            for (i64 c = 0; c < CV; c += 8) {
                const v8 xh = (ld_f32(xr + c) - m) * rs;
                st_f32(out + c, rs * (ld_f32(gr + c) * ld_f32(w + c) - av - xh * bv));
            }
            for (i64 c = CV; c < C; ++c)
                out[c] = rstd * (gr[c] * w[c] - a - (xr[c] - mean) * rstd * bsum);
        }
    }
    return 0;
}
