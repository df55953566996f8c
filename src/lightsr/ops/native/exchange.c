/* LAMNet's information exchange (IEM) in float32 training, image by image: the forward writes both
 * gated branches into the two channel halves of one map (the concatenation proj_out reads), the
 * backward reads that map's gradient. lightsr/ops/exchange.py documents the formulas; per image of
 * N pixels with C channels per branch (x_c, x_s: pixel rows, channel stride 1):
 *
 *   s = mean_N(x_s)  (C)          m[p] = sigmoid(<s, x_c[p]> / C)        out[p][0:C]  = m[p] x_c[p]
 *   t[p] = mean_C(x_c[p])         n = sigmoid(sum_p x_s[p] t[p] / N) (C)  out[p][C:2C] = n x_s[p]
 *
 * and with G_c, G_s the halves of the output gradient:
 *
 *   g_a[p] = <G_c[p], x_c[p]> m (1 - m)          g_e = sum_p G_s[p] x_s[p] n (1 - n)   (C)
 *   gx_c[p] = m G_c[p] + (g_a[p] s + <x_s[p], g_e> / N) / C
 *   gx_s[p] = n G_s[p] + (t[p] g_e + sum_q g_a[q] x_c[q] / C) / N
 *
 * Three passes over an image in the forward, two in the backward (an image's maps, a few hundred KiB
 * at training patch sizes, stay in L2 between them); torch ran about ten whole-batch passes. Images
 * [b0, b1) per call: callers split the batch across threads. stats holds per image s, n (C each) and
 * t, m (N each) for the backward. C must be a multiple of 8 up to IEM_MAX_CHANNELS (LAMNet: 32; else
 * the entry points return 1). Sums in float32, pixel by
 * pixel in order (the same bits on any number of threads).
 */
#include <math.h>
#include <stdlib.h>

#include "simd.h"

typedef struct {
    i64 N, C;       /* pixels per image, channels per branch */
    i64 cb, cp;     /* x_c: image and pixel strides (elements) */
    i64 sb, sp;     /* x_s */
    i64 ob, op;     /* the concatenated map (out / its gradient): channels [0, C) gate x_c, [C, 2C) x_s */
    i64 gcb, gcp;   /* the gradients of x_c and x_s (backward) */
    i64 gsb, gsp;
} iem_geom;

static inline float hsum8(v8 v)
{
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

static inline float sigmoid1(float a) { return 1.0f / (1.0f + expf(-a)); }

#define IEM_MAX_CHANNELS 1024 /* MAX_CHANNELS of lightsr/ops/_exchange_native.py */

int lightsr_iem_forward_f32(const float *xc, const float *xs, float *out, float *stats, const iem_geom *g,
                            i64 b0, i64 b1)
{
    const i64 N = g->N, C = g->C;
    const float inv_c = 1.0f / (float)C, inv_n = 1.0f / (float)N;
    if (C <= 0 || C % 8 || C > IEM_MAX_CHANNELS)
        return 1;
    v8 acc[IEM_MAX_CHANNELS / 8];
    for (i64 b = b0; b < b1; ++b) {
        const float *c0 = xc + b * g->cb, *s0 = xs + b * g->sb;
        float *o0 = out + b * g->ob, *s = stats + b * (2 * C + 2 * N), *n = s + C, *t = n + C, *m = t + N;
        /* pass 1: s = mean_N(x_s), t[p] = mean_C(x_c[p]) */
        for (i64 v = 0; v < C / 8; ++v)
            acc[v] = (v8){0};
        for (i64 p = 0; p < N; ++p) {
            const float *cr = c0 + p * g->cp, *sr = s0 + p * g->sp;
            v8 tc = {0};
            for (i64 v = 0; v < C / 8; ++v) {
                acc[v] += ld_f32(sr + 8 * v);
                tc += ld_f32(cr + 8 * v);
            }
            t[p] = hsum8(tc) * inv_c;
        }
        for (i64 v = 0; v < C / 8; ++v)
            st_f32(s + 8 * v, acc[v] * inv_n);
        /* pass 2: m[p] = sigmoid(<s, x_c[p]> / C), e = sum_p x_s[p] t[p] */
        for (i64 v = 0; v < C / 8; ++v)
            acc[v] = (v8){0};
        for (i64 p = 0; p < N; ++p) {
            const float *cr = c0 + p * g->cp, *sr = s0 + p * g->sp;
            v8 a = {0};
            const v8 tp = (v8){0} + t[p];
            for (i64 v = 0; v < C / 8; ++v) {
                a += ld_f32(s + 8 * v) * ld_f32(cr + 8 * v);
                acc[v] += ld_f32(sr + 8 * v) * tp;
            }
            m[p] = sigmoid1(hsum8(a) * inv_c);
        }
        for (i64 v = 0; v < C / 8; ++v)
            for (int l = 0; l < 8; ++l)
                n[8 * v + l] = sigmoid1(acc[v][l] * inv_n);
        /* pass 3: the gated branches, side by side */
        for (i64 p = 0; p < N; ++p) {
            const float *cr = c0 + p * g->cp, *sr = s0 + p * g->sp;
            float *orow = o0 + p * g->op;
            const v8 mp = (v8){0} + m[p];
            for (i64 v = 0; v < C / 8; ++v) {
                st_f32(orow + 8 * v, mp * ld_f32(cr + 8 * v));
                st_f32(orow + C + 8 * v, ld_f32(n + 8 * v) * ld_f32(sr + 8 * v));
            }
        }
    }
    return 0;
}

/* scratch: N floats per call (g_a of the current image); returns 2 if it cannot be allocated, 1 for
 * unsupported channel counts (as the forward) */
int lightsr_iem_backward_f32(const float *gout, const float *xc, const float *xs, const float *stats, float *gxc,
                             float *gxs, const iem_geom *g, i64 b0, i64 b1)
{
    const i64 N = g->N, C = g->C;
    const float inv_c = 1.0f / (float)C, inv_n = 1.0f / (float)N;
    if (C <= 0 || C % 8 || C > IEM_MAX_CHANNELS)
        return 1;
    float *ga = malloc(sizeof(float) * (size_t)(N > 0 ? N : 1));
    if (!ga)
        return 2;
    v8 ge[IEM_MAX_CHANNELS / 8], gm[IEM_MAX_CHANNELS / 8];
    for (i64 b = b0; b < b1; ++b) {
        const float *c0 = xc + b * g->cb, *s0 = xs + b * g->sb, *g0 = gout + b * g->ob;
        const float *s = stats + b * (2 * C + 2 * N), *n = s + C, *t = n + C, *m = t + N;
        /* pass 1: g_a[p], sum_p g_a[p] x_c[p], sum_p G_s[p] x_s[p] */
        for (i64 v = 0; v < C / 8; ++v)
            ge[v] = gm[v] = (v8){0};
        for (i64 p = 0; p < N; ++p) {
            const float *cr = c0 + p * g->cp, *sr = s0 + p * g->sp, *gr = g0 + p * g->op;
            v8 d = {0};
            for (i64 v = 0; v < C / 8; ++v) {
                d += ld_f32(gr + 8 * v) * ld_f32(cr + 8 * v);
                ge[v] += ld_f32(gr + C + 8 * v) * ld_f32(sr + 8 * v);
            }
            ga[p] = hsum8(d) * m[p] * (1.0f - m[p]);
            const v8 gap = (v8){0} + ga[p];
            for (i64 v = 0; v < C / 8; ++v)
                gm[v] += gap * ld_f32(cr + 8 * v);
        }
        for (i64 v = 0; v < C / 8; ++v) {
            const v8 nv = ld_f32(n + 8 * v);
            ge[v] *= nv * (1.0f - nv);
            gm[v] *= inv_c * inv_n; /* sum_q g_a[q] x_c[q] / C / N */
        }
        /* pass 2: the input gradients */
        float *a0 = gxc + b * g->gcb, *e0 = gxs + b * g->gsb;
        for (i64 p = 0; p < N; ++p) {
            const float *sr = s0 + p * g->sp, *gr = g0 + p * g->op;
            float *ac = a0 + p * g->gcp, *as = e0 + p * g->gsp;
            v8 d = {0};
            for (i64 v = 0; v < C / 8; ++v)
                d += ld_f32(sr + 8 * v) * ge[v];
            const v8 mp = (v8){0} + m[p], gap = (v8){0} + ga[p] * inv_c, gtp = (v8){0} + hsum8(d) * inv_n * inv_c;
            const v8 tp = (v8){0} + t[p] * inv_n;
            for (i64 v = 0; v < C / 8; ++v) {
                st_f32(ac + 8 * v, mp * ld_f32(gr + 8 * v) + gap * ld_f32(s + 8 * v) + gtp);
                st_f32(as + 8 * v, ld_f32(n + 8 * v) * ld_f32(gr + C + 8 * v) + tp * ge[v] + gm[v]);
            }
        }
    }
    free(ga);
    return 0;
}
