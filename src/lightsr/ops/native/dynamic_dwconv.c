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

int lightsr_dyn_fused_cl(const float *x, const float *hidden, const float *wt, const float *bias, float *y,
                         const dyn_fused_geom *d, i64 r0, i64 r1)
{
    const i64 H = d->H, W = d->W, C = d->C, G = d->G, P = d->P, K = d->K, KK = K * K, p = K / 2;
    const i64 NK = G * KK, V = (P + 7) / 8;
    const float *end = x + d->B * H * W * C;
    float *buf = (float *)malloc(sizeof(float) * (size_t)(C + 8 * V + 8 + NK));
    if (!buf)
        return 2;
    float *kbuf = buf + C + 8 * V + 8;
    for (i64 r = r0; r < r1; ++r) {
        const i64 b = r / H, oh = r % H;
        i64 i0, i1;
        tap_range(oh, p, 1, K, H, &i0, &i1);
        for (i64 ow = 0; ow < W; ++ow) {
            i64 j0, j1;
            tap_range(ow, p, 1, K, W, &j0, &j1);
            kernels_of_pixel(hidden + (r * W + ow) * d->NH, wt, bias, kbuf, d->NH, NK);
            for (i64 g = 0; g < G; ++g) {
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
            memcpy(y + (r * W + ow) * C, buf, sizeof(float) * (size_t)C);
        }
    }
    free(buf);
    return 0;
}
