/* The three inner loops of the pixel-wise dynamic depth-wise convolution (DLGSANet's MHDLSA) on
 * the planar "canvas" layout of lightsr/ops/dynamic_dwconv.py, float32.
 *
 * Per kernel group g (G groups of P channels) and strip of R rows, with K x K taps t = (i, j):
 *
 *   apply     o[g][c][r][x]          = sum_t w[g][t][r][x] * xp[g][c][r + i][x + j]
 *   grad x    gp[g][c][r + i][x + j] += w[g][t][r][x] * gs[g][c][r][x]         (computed as a gather)
 *   grad w    gw[g][t][r][x]         = sum_c gs[g][c][r][x] * xp[g][c][r + i][x + j]
 *
 * x runs over the L valid columns of a canvas row (columns are contiguous); xp is the zero-padded
 * canvas (its rows are L + K - 1 columns long at least, and the strip's rows r + i are inside it);
 * every other index has an element stride given by the caller. The Python op documents the
 * layout and the semantics; these loops replace its K*K per-tap tensor passes with one pass, the
 * accumulators of all P channels of a column vector in registers while the taps stream through.
 * Lines (g, r) are independent: callers split [line0, line1) of the G * R lines over threads.
 */
#include <stdlib.h>

#include "simd.h"

typedef struct {
    i64 G, P, R, L, K;
    i64 og, oc, orow;      /* o (apply) / gp (grad x, the padded accumulator) strides */
    i64 xg, xc, xrow;      /* xp (apply, grad w) / gs (grad x) strides */
    i64 wg, wt, wrow;      /* w (apply, grad x) / gw (grad w) strides */
    i64 sg, sc, srow;      /* gs strides (grad w) */
} dyn_geom;

#define MAXP 8

/* ---- apply ---------------------------------------------------------------------------------- */

/* columns [x0, x0 + 8) of line (g, r) for channels [c0, c0 + NC) */
#define APPLY_BLOCK(NC)                                                                                     \
    static inline void apply_block_##NC(const dyn_geom *d, float *o, const float *xp, const float *w, i64 x0) \
    {                                                                                                         \
        v8 acc[NC];                                                                                           \
        for (int c = 0; c < NC; ++c)                                                                          \
            acc[c] = (v8){0};                                                                                 \
        const i64 K = d->K;                                                                                   \
        for (i64 i = 0; i < K; ++i)                                                                           \
            for (i64 j = 0; j < K; ++j) {                                                                     \
                const v8 wv = ld_f32(w + (i * K + j) * d->wt + x0);                                           \
                const float *xr = xp + i * d->xrow + x0 + j;                                                  \
                for (int c = 0; c < NC; ++c)                                                                  \
                    acc[c] += wv * ld_f32(xr + c * d->xc);                                                    \
            }                                                                                                 \
        for (int c = 0; c < NC; ++c)                                                                          \
            st_f32(o + c * d->oc + x0, acc[c]);                                                               \
    }
APPLY_BLOCK(1)
APPLY_BLOCK(2)
APPLY_BLOCK(3)
APPLY_BLOCK(4)
APPLY_BLOCK(5)
APPLY_BLOCK(6)
APPLY_BLOCK(7)
APPLY_BLOCK(8)

static void apply_columns(const dyn_geom *d, float *o, const float *xp, const float *w, i64 nc, i64 x0)
{
    switch (nc) {
    case 1: apply_block_1(d, o, xp, w, x0); break;
    case 2: apply_block_2(d, o, xp, w, x0); break;
    case 3: apply_block_3(d, o, xp, w, x0); break;
    case 4: apply_block_4(d, o, xp, w, x0); break;
    case 5: apply_block_5(d, o, xp, w, x0); break;
    case 6: apply_block_6(d, o, xp, w, x0); break;
    case 7: apply_block_7(d, o, xp, w, x0); break;
    default: apply_block_8(d, o, xp, w, x0); break;
    }
}

static void apply_scalar(const dyn_geom *d, float *o, const float *xp, const float *w, i64 nc, i64 x)
{
    const i64 K = d->K;
    for (i64 c = 0; c < nc; ++c) {
        float a = 0.0f;
        for (i64 i = 0; i < K; ++i)
            for (i64 j = 0; j < K; ++j)
                a += w[(i * K + j) * d->wt + x] * xp[c * d->xc + i * d->xrow + x + j];
        o[c * d->oc + x] = a;
    }
}

int lightsr_dyn_apply(float *o, const float *xp, const float *w, const dyn_geom *d, i64 line0, i64 line1)
{
    const i64 L = d->L;
    for (i64 line = line0; line < line1; ++line) {
        const i64 g = line / d->R, r = line % d->R;
        for (i64 c0 = 0; c0 < d->P; c0 += MAXP) {
            const i64 nc = d->P - c0 < MAXP ? d->P - c0 : MAXP;
            float *ol = o + g * d->og + c0 * d->oc + r * d->orow;
            const float *xl = xp + g * d->xg + c0 * d->xc + r * d->xrow;
            const float *wl = w + g * d->wg + r * d->wrow;
            i64 x = 0;
            for (; x + 8 <= L; x += 8)
                apply_columns(d, ol, xl, wl, nc, x);
            if (x < L && L >= 8) /* the last columns as one vector overlapping the previous one */
                apply_columns(d, ol, xl, wl, nc, L - 8);
            else
                for (; x < L; ++x)
                    apply_scalar(d, ol, xl, wl, nc, x);
        }
    }
    return 0;
}

/* ---- grad w --------------------------------------------------------------------------------- */

/* gw columns [x0, x0 + 8) of line (g, r): channels in chunks of MAXP, the first chunk stores and
 * the others accumulate */
#define WGRAD(NC, ACC)                                                                                       \
    static inline void wgrad_##ACC##_##NC(const dyn_geom *d, float *gw, const float *xp, const float *gs, i64 x0) \
    {                                                                                                          \
        v8 g[NC];                                                                                              \
        for (int c = 0; c < NC; ++c)                                                                           \
            g[c] = ld_f32(gs + c * d->sc + x0);                                                                \
        const i64 K = d->K;                                                                                    \
        for (i64 i = 0; i < K; ++i)                                                                            \
            for (i64 j = 0; j < K; ++j) {                                                                      \
                const float *xr = xp + i * d->xrow + x0 + j;                                                   \
                v8 acc = g[0] * ld_f32(xr);                                                                    \
                for (int c = 1; c < NC; ++c)                                                                   \
                    acc += g[c] * ld_f32(xr + c * d->xc);                                                      \
                float *out = gw + (i * K + j) * d->wt + x0;                                                    \
                st_f32(out, ACC ? ld_f32(out) + acc : acc);                                                    \
            }                                                                                                  \
    }
#define store 0
#define add 1
WGRAD(1, store) WGRAD(2, store) WGRAD(3, store) WGRAD(4, store)
WGRAD(5, store) WGRAD(6, store) WGRAD(7, store) WGRAD(8, store)
WGRAD(1, add) WGRAD(2, add) WGRAD(3, add) WGRAD(4, add)
WGRAD(5, add) WGRAD(6, add) WGRAD(7, add) WGRAD(8, add)
#undef store
#undef add

static void wgrad_columns(const dyn_geom *d, float *gw, const float *xp, const float *gs, i64 nc, int acc, i64 x0)
{
#define CASES(ACC)                                                                                  \
    switch (nc) {                                                                                   \
    case 1: wgrad_##ACC##_1(d, gw, xp, gs, x0); break;                                              \
    case 2: wgrad_##ACC##_2(d, gw, xp, gs, x0); break;                                              \
    case 3: wgrad_##ACC##_3(d, gw, xp, gs, x0); break;                                              \
    case 4: wgrad_##ACC##_4(d, gw, xp, gs, x0); break;                                              \
    case 5: wgrad_##ACC##_5(d, gw, xp, gs, x0); break;                                              \
    case 6: wgrad_##ACC##_6(d, gw, xp, gs, x0); break;                                              \
    case 7: wgrad_##ACC##_7(d, gw, xp, gs, x0); break;                                              \
    default: wgrad_##ACC##_8(d, gw, xp, gs, x0); break;                                             \
    }
    if (acc) {
        CASES(add)
    } else {
        CASES(store)
    }
#undef CASES
}

static void wgrad_scalar(const dyn_geom *d, float *gw, const float *xp, const float *gs, i64 nc, int acc, i64 x)
{
    const i64 K = d->K;
    for (i64 t = 0; t < K * K; ++t) {
        const i64 i = t / K, j = t % K;
        float a = acc ? gw[t * d->wt + x] : 0.0f;
        for (i64 c = 0; c < nc; ++c)
            a += gs[c * d->sc + x] * xp[c * d->xc + i * d->xrow + x + j];
        gw[t * d->wt + x] = a;
    }
}

int lightsr_dyn_weight_grad(float *gw, const float *xp, const float *gs, const dyn_geom *d, i64 line0, i64 line1)
{
    const i64 L = d->L;
    for (i64 line = line0; line < line1; ++line) {
        const i64 g = line / d->R, r = line % d->R;
        float *gl = gw + g * d->wg + r * d->wrow;
        for (i64 c0 = 0; c0 < d->P; c0 += MAXP) {
            const i64 nc = d->P - c0 < MAXP ? d->P - c0 : MAXP;
            const int acc = c0 > 0;
            const float *xl = xp + g * d->xg + c0 * d->xc + r * d->xrow;
            const float *sl = gs + g * d->sg + c0 * d->sc + r * d->srow;
            i64 x = 0;
            for (; x + 8 <= L; x += 8)
                wgrad_columns(d, gl, xl, sl, nc, acc, x);
            for (; x < L; ++x) /* accumulating chunks must not redo columns: scalar tail */
                wgrad_scalar(d, gl, xl, sl, nc, acc, x);
        }
    }
    return 0;
}

/* ---- grad x (gather form) ------------------------------------------------------------------- */

/* gp row q (padded coordinates, q in [0, R + K - 1)) of group g, channels [c0, c0 + nc):
 * gp[c][q][X] += sum over taps (i, j) with 0 <= q - i < R and 0 <= X - j < L of
 *                w[t][q - i][X - j] * gs[c][q - i][X - j] */
static void gx_row(const dyn_geom *d, float *gp, const float *gs, const float *w, i64 nc, i64 q)
{
    const i64 K = d->K, L = d->L, R = d->R, width = L + K - 1;
    const i64 i0 = q - (R - 1) > 0 ? q - (R - 1) : 0, i1 = q + 1 < K ? q + 1 : K;
    float *gq = gp + q * d->orow;
    v8 acc[MAXP];
    i64 X = 0;
    /* interior columns: every tap's column X - j is in [0, L) */
    for (X = K - 1; X + 8 <= L; X += 8) {
        for (i64 c = 0; c < nc; ++c)
            acc[c] = (v8){0};
        for (i64 i = i0; i < i1; ++i) {
            const float *wr = w + (q - i) * d->wrow + X;
            const float *sr = gs + (q - i) * d->xrow + X;
            for (i64 j = 0; j < K; ++j) {
                const v8 wv = ld_f32(wr + i * K * d->wt + j * d->wt - j);
                for (i64 c = 0; c < nc; ++c)
                    acc[c] += wv * ld_f32(sr + c * d->xc - j);
            }
        }
        for (i64 c = 0; c < nc; ++c)
            st_f32(gq + c * d->oc + X, ld_f32(gq + c * d->oc + X) + acc[c]);
    }
    const i64 interior_end = X; /* columns [K - 1, interior_end) are done */
    for (X = 0; X < width; ++X) {
        if (X >= K - 1 && X < interior_end)
            continue;
        for (i64 c = 0; c < nc; ++c) {
            float a = 0.0f;
            for (i64 i = i0; i < i1; ++i)
                for (i64 j = 0; j < K; ++j) {
                    const i64 col = X - j;
                    if (col < 0 || col >= L)
                        continue;
                    a += w[(i * K + j) * d->wt + (q - i) * d->wrow + col] * gs[c * d->xc + (q - i) * d->xrow + col];
                }
            gq[c * d->oc + X] += a;
        }
    }
}

int lightsr_dyn_grad_input(float *gp, const float *gs, const float *w, const dyn_geom *d, i64 line0, i64 line1)
{
    /* lines: G * (R + K - 1) padded rows */
    const i64 rows = d->R + d->K - 1;
    for (i64 line = line0; line < line1; ++line) {
        const i64 g = line / rows, q = line % rows;
        for (i64 c0 = 0; c0 < d->P; c0 += MAXP) {
            const i64 nc = d->P - c0 < MAXP ? d->P - c0 : MAXP;
            gx_row(d, gp + g * d->og + c0 * d->oc, gs + g * d->xg + c0 * d->xc, w + g * d->wg, nc, q);
        }
    }
    return 0;
}

/* ---- channels-last helpers --------------------------------------------------------------- */

/* 8 floats from p; past `end` (the tensor's last channel) zeros instead of reads */
static inline v8 load_tail_safe(const float *p, const float *end)
{
    if (p + 8 <= end)
        return ld_f32(p);
    float tmp[8] = {0};
    memcpy(tmp, p, sizeof(float) * (size_t)(end - p));
    return ld_f32(tmp);
}

/* ---- the whole fused forward on channels-last tensors -----------------------------------------
 *
 * y[b, h, w, c] = sum_t kern[pixel][g(c) * K*K + t] * x[b, h + i - K/2, w + j - K/2, c]  (zero outside)
 *
 * x and y are dense channels-last (B, H, W, C) float32, hidden (B, H, W, NH) likewise. Each
 * pixel's G * K*K kernel values are computed here from its NH hidden values (the kernel-generating
 * 1x1 convolution: kern = bias + wt^T hidden, wt given as (NH, G*K*K) rows), in 8-vector blocks
 * kept in registers, into a small buffer: no kernel tensor, and no matrix-product call between
 * native ones (the BLAS threads and these would take turns). Each group's P channels are
 * accumulated as ceil(P / 8) vectors at channel offset g * P + 8 v, written in ascending order so
 * that a vector's lanes beyond its group are overwritten by the next group's; the lanes read past
 * the last channel of the tensor's last pixel are zeros (load_tail_safe). */
static void kernels_of_pixel(const float *hp, const float *wt, const float *bias, float *kbuf, i64 NH, i64 NK)
{
    i64 o = 0;
    for (; o + 32 <= NK; o += 32) {
        v8 a0 = bias ? ld_f32(bias + o) : (v8){0}, a1 = bias ? ld_f32(bias + o + 8) : (v8){0};
        v8 a2 = bias ? ld_f32(bias + o + 16) : (v8){0}, a3 = bias ? ld_f32(bias + o + 24) : (v8){0};
        for (i64 k = 0; k < NH; ++k) {
            const float h = hp[k];
            const float *wr = wt + k * NK + o;
            a0 += h * ld_f32(wr);
            a1 += h * ld_f32(wr + 8);
            a2 += h * ld_f32(wr + 16);
            a3 += h * ld_f32(wr + 24);
        }
        st_f32(kbuf + o, a0);
        st_f32(kbuf + o + 8, a1);
        st_f32(kbuf + o + 16, a2);
        st_f32(kbuf + o + 24, a3);
    }
    for (; o < NK; ++o) {
        float a = bias ? bias[o] : 0.0f;
        for (i64 k = 0; k < NH; ++k)
            a += hp[k] * wt[k * NK + o];
        kbuf[o] = a;
    }
}

typedef struct {
    i64 B, H, W, C, G, P, K, NH;
} dyn_fused_geom;

/* Two horizontally neighbouring pixels at once where both have all K x K taps inside the image
 * (the interior): their kernels are made together, each weight vector of the 1x1 convolution
 * feeding both pixels' accumulators (eight in flight), and the taps are applied to up to four
 * groups of both pixels at once (eight accumulators, one chain each): an input vector of column
 * ow - p + jj serves the first pixel's tap jj and the second's tap jj - 1, so the K + 1 columns of a
 * kernel row are loaded once for both. Borders, groups wider than one vector and the tensor's last
 * pixels (whose last vector would read past the end) go one pixel at a time. */
static void kernels_of_pair(const float *h0, const float *h1, const float *wt, const float *bias, float *k0, float *k1,
                            i64 NH, i64 NK)
{
    i64 o = 0;
    for (; o + 32 <= NK; o += 32) {
        v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        if (bias) {
            a0 = ld_f32(bias + o), a1 = ld_f32(bias + o + 8), a2 = ld_f32(bias + o + 16), a3 = ld_f32(bias + o + 24);
        }
        v8 b0 = a0, b1 = a1, b2 = a2, b3 = a3;
        for (i64 k = 0; k < NH; ++k) {
            const float s = h0[k], t = h1[k];
            const float *wr = wt + k * NK + o;
            const v8 w0 = ld_f32(wr), w1 = ld_f32(wr + 8), w2 = ld_f32(wr + 16), w3 = ld_f32(wr + 24);
            a0 += s * w0;
            b0 += t * w0;
            a1 += s * w1;
            b1 += t * w1;
            a2 += s * w2;
            b2 += t * w2;
            a3 += s * w3;
            b3 += t * w3;
        }
        st_f32(k0 + o, a0), st_f32(k0 + o + 8, a1), st_f32(k0 + o + 16, a2), st_f32(k0 + o + 24, a3);
        st_f32(k1 + o, b0), st_f32(k1 + o + 8, b1), st_f32(k1 + o + 16, b2), st_f32(k1 + o + 24, b3);
    }
    for (; o + 8 <= NK; o += 8) {
        v8 a = bias ? ld_f32(bias + o) : (v8){0}, b = a;
        for (i64 k = 0; k < NH; ++k) {
            const v8 w = ld_f32(wt + k * NK + o);
            a += h0[k] * w;
            b += h1[k] * w;
        }
        st_f32(k0 + o, a);
        st_f32(k1 + o, b);
    }
    for (; o < NK; ++o) {
        float a = bias ? bias[o] : 0.0f, b = a;
        for (i64 k = 0; k < NH; ++k) {
            a += h0[k] * wt[k * NK + o];
            b += h1[k] * wt[k * NK + o];
        }
        k0[o] = a;
        k1[o] = b;
    }
}

/* groups [g0, g0 + NG) of the pair: xr0 points at input row oh - p (channel 0) and column ow - p
 * (the first pixel's first tap); o0 / o1 are the pixels' output buffers */
#define APPLY_PAIR(NG)                                                                                        \
    static inline void apply_pair_##NG(const float *xr0, const float *k0, const float *k1, float *o0, float *o1, \
                                       const dyn_fused_geom *d, i64 g0, i64 i0, i64 i1)                        \
    {                                                                                                         \
        const i64 K = d->K, KK = K * K, C = d->C, P = d->P, rowstride = d->W * C;                             \
        v8 a[NG], b[NG];                                                                                      \
        for (int q = 0; q < NG; ++q)                                                                          \
            a[q] = (v8){0}, b[q] = (v8){0};                                                                   \
        for (i64 i = i0; i < i1; ++i) {                                                                       \
            const float *xr = xr0 + i * rowstride + g0 * P;                                                  \
            const float *kr0 = k0 + g0 * KK + i * K, *kr1 = k1 + g0 * KK + i * K;                              \
            for (int q = 0; q < NG; ++q)                                                                      \
                a[q] += kr0[q * KK] * ld_f32(xr + q * P);                                                     \
            for (i64 jj = 1; jj < K; ++jj) {                                                                  \
                const float *xs = xr + jj * C;                                                                \
                for (int q = 0; q < NG; ++q) {                                                                \
                    const v8 xv = ld_f32(xs + q * P);                                                         \
                    a[q] += kr0[q * KK + jj] * xv;                                                            \
                    b[q] += kr1[q * KK + jj - 1] * xv;                                                        \
                }                                                                                             \
            }                                                                                                 \
            for (int q = 0; q < NG; ++q)                                                                      \
                b[q] += kr1[q * KK + K - 1] * ld_f32(xr + K * C + q * P);                                     \
        }                                                                                                     \
        for (int q = 0; q < NG; ++q) { /* ascending: a group's spare lanes are overwritten by the next's */     \
            st_f32(o0 + (g0 + q) * P, a[q]);                                                                  \
            st_f32(o1 + (g0 + q) * P, b[q]);                                                                  \
        }                                                                                                     \
    }
APPLY_PAIR(1)
APPLY_PAIR(2)
APPLY_PAIR(3)
APPLY_PAIR(4)

static void apply_pair(const float *xr0, const float *k0, const float *k1, float *o0, float *o1, const dyn_fused_geom *d,
                       i64 i0, i64 i1)
{
    for (i64 g0 = 0; g0 < d->G; g0 += 4) {
        switch (d->G - g0 < 4 ? d->G - g0 : 4) {
        case 1: apply_pair_1(xr0, k0, k1, o0, o1, d, g0, i0, i1); break;
        case 2: apply_pair_2(xr0, k0, k1, o0, o1, d, g0, i0, i1); break;
        case 3: apply_pair_3(xr0, k0, k1, o0, o1, d, g0, i0, i1); break;
        default: apply_pair_4(xr0, k0, k1, o0, o1, d, g0, i0, i1); break;
        }
    }
}

/* one pixel (any position): kernels in kbuf, the outputs into buf */
static void fused_pixel(const float *x, const float *end, const float *kbuf, float *buf, const dyn_fused_geom *d,
                        i64 b, i64 oh, i64 ow, i64 i0, i64 i1)
{
    const i64 H = d->H, W = d->W, C = d->C, P = d->P, K = d->K, KK = K * K, p = K / 2, V = (P + 7) / 8;
    i64 j0, j1;
    tap_range(ow, p, 1, K, W, &j0, &j1);
    for (i64 g = 0; g < d->G; ++g) {
        for (i64 v = 0; v < V; ++v) {
            const i64 c0 = g * P + 8 * v;
            const int tail = c0 + 8 > C;
            v8 acc = {0};
            for (i64 i = i0; i < i1; ++i) {
                const float *xr = x + ((b * H + oh + i - p) * W) * C + c0;
                const float *kr = kbuf + g * KK + i * K;
                for (i64 j = j0; j < j1; ++j) {
                    const float *xs = xr + (ow + j - p) * C;
                    acc += kr[j] * (tail ? load_tail_safe(xs, end) : ld_f32(xs));
                }
            }
            st_f32(buf + c0, acc);
        }
    }
}

int lightsr_dyn_fused_cl(const float *x, const float *hidden, const float *wt, const float *bias, float *y,
                         const dyn_fused_geom *d, i64 r0, i64 r1)
{
    const i64 H = d->H, W = d->W, C = d->C, G = d->G, P = d->P, K = d->K, p = K / 2;
    const i64 NK = G * K * K, V = (P + 7) / 8, span = C + 8 * V + 8;
    const float *end = x + d->B * H * W * C;
    float *buf = (float *)malloc(sizeof(float) * (size_t)(2 * span + 2 * NK));
    if (!buf)
        return 2;
    float *buf1 = buf + span, *k0 = buf + 2 * span, *k1 = k0 + NK;
    for (i64 r = r0; r < r1; ++r) {
        const i64 b = r / H, oh = r % H;
        i64 i0, i1;
        tap_range(oh, p, 1, K, H, &i0, &i1);
        const float *xr0 = x + ((b * H + oh - p) * W) * C; /* row oh - p (may lie outside: only rows i0.. are read) */
        /* the last input pixel the pair at ow reads is (oh + i1 - 1 - p, ow + 1 + p); its last vector must end in x */
        const i64 last_row = (b * H + oh + i1 - 1 - p) * W;
        for (i64 ow = 0; ow < W;) {
            const float *hp = hidden + (r * W + ow) * d->NH;
            if (V == 1 && ow >= p && ow + 1 + p < W && x + (last_row + ow + 1 + p) * C + (G - 1) * P + 8 <= end) {
                kernels_of_pair(hp, hp + d->NH, wt, bias, k0, k1, d->NH, NK);
                apply_pair(xr0 + (ow - p) * C, k0, k1, buf, buf1, d, i0, i1);
                memcpy(y + (r * W + ow) * C, buf, sizeof(float) * (size_t)C);
                memcpy(y + (r * W + ow + 1) * C, buf1, sizeof(float) * (size_t)C);
                ow += 2;
                continue;
            }
            kernels_of_pixel(hp, wt, bias, k0, d->NH, NK);
            fused_pixel(x, end, k0, buf, d, b, oh, ow, i0, i1);
            memcpy(y + (r * W + ow) * C, buf, sizeof(float) * (size_t)C);
            ow += 1;
        }
    }
    free(buf);
    return 0;
}
