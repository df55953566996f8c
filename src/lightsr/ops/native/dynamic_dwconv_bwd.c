/* The backward of DLGSANet's fused dynamic depth-wise convolution on channels-last float32
 * tensors, in one native pass (lightsr/ops/dynamic_dwconv.py has the forward and the reference).
 *
 * Forward, per output pixel q = (b, oh, ow) with hidden values h_q (NH) and K x K taps t = (i, j):
 *
 *   k_q[n]       = bias[n] + sum_m wk[n][m] h_q[m]                  (n = g K*K + t: G groups of P channels)
 *   y[q][c]      = sum_t k_q[g(c) K*K + t] x[b, oh + i - p, ow + j - p][c]      (zero outside the image)
 *
 * Backward, for the output gradient go:
 *
 *   gk_q[n]      = sum_{c in g} go[q][c] x[tap t of q][c]               (the kernels' gradient)
 *   gx[tap t of q][c] += k_q[n] go[q][c]
 *   gh[q][m]     = sum_n wk[n][m] gk_q[n]
 *   gwk[n][m]   += gk_q[n] h_q[m],   gbias[n] += gk_q[n]
 *
 * The kernels are recomputed (never stored), as in the forward. Work goes row by row of output
 * pixels, vectorised over eight pixels of a row: each row's tensors are transposed once into
 * planar rows (channel-major, zero margins), where every tap is an aligned-in-structure vector
 * operation and the per-pixel products of the 1x1 convolution are broadcast multiply-adds.
 * Input rows (x and its gradient) live in K slots (row index mod K) for as long as a tap reads or
 * writes them; a gradient row is added into gx when its slot is taken by a new row or at the end
 * of a band. Bands of `band` >= K - 1 rows of even and of odd index are two passes (the caller
 * runs one after the other), so that two bands of one pass never write the same gx row. The
 * weight and bias gradients are sums per band (the caller adds them).
 */
#include <stdlib.h>
#include <string.h>

#include "simd.h"

typedef struct {
    i64 B, H, W, C, G, P, K, NH, band;
    const float *x, *hidden, *wk, *bias, *go; /* wk: (NK, NH) rows; bias may be NULL */
    float *gx, *gh;                           /* gx zeroed by the caller; gh fully written */
} dyn_bwd_geom;

typedef struct {
    i64 Wv, XW, KW, M; /* W rounded up to 8; planar input-row width; k / go row width; their left margin */
    float *xs, *gxs;   /* K slots of C planar rows of XW: x and its gradient (image column w at w + p) */
    i64 *xtag, *gtag;  /* the global input row held by each slot, -1: none */
    float *hP, *goP, *kP, *gkP, *ghP;
    float *acc; /* NK x (NH + 1) x 8 lane sums of the weight and bias gradients */
} dyn_bwd_ws;

static void planar(const float *row, i64 W, i64 C, float *dst, i64 ld, i64 off)
{
    for (i64 w = 0; w < W; ++w)
        for (i64 c = 0; c < C; ++c)
            dst[c * ld + off + w] = row[w * C + c];
}

static void gx_flush(const dyn_bwd_geom *d, dyn_bwd_ws *s, i64 slot)
{
    const i64 gr = s->gtag[slot], W = d->W, C = d->C, p = d->K / 2;
    if (gr < 0)
        return;
    float *out = d->gx + gr * W * C;
    const float *src = s->gxs + slot * C * s->XW + p;
    for (i64 w = 0; w < W; ++w)
        for (i64 c = 0; c < C; ++c)
            out[w * C + c] += src[c * s->XW + w];
    s->gtag[slot] = -1;
}

static const float *x_slot(const dyn_bwd_geom *d, dyn_bwd_ws *s, i64 gr)
{
    const i64 slot = gr % d->K, C = d->C, XW = s->XW, p = d->K / 2;
    float *dst = s->xs + slot * C * XW;
    if (s->xtag[slot] != gr) {
        for (i64 c = 0; c < C; ++c) {
            memset(dst + c * XW, 0, sizeof(float) * (size_t)p);
            memset(dst + c * XW + p + d->W, 0, sizeof(float) * (size_t)(XW - p - d->W));
        }
        planar(d->x + gr * d->W * C, d->W, C, dst, XW, p);
        s->xtag[slot] = gr;
    }
    return dst;
}

static float *gx_slot(const dyn_bwd_geom *d, dyn_bwd_ws *s, i64 gr)
{
    const i64 slot = gr % d->K, n = d->C * s->XW;
    float *dst = s->gxs + slot * n;
    if (s->gtag[slot] != gr) {
        gx_flush(d, s, slot);
        memset(dst, 0, sizeof(float) * (size_t)n);
        s->gtag[slot] = gr;
    }
    return dst;
}

/* Every loop below keeps four to eight independent accumulators in flight (a chain of dependent
 * multiply-adds waits four cycles for each). */

/* out[q][v ..] = bias[q] + sum_k w[q sq + k sk] in[k][v ..] (bias may be NULL) for four outputs q and
 * the 8 or 16 pixels from v (NV vectors): one load of an input vector serves four outputs. The
 * kernels (w = wk, sq = NH, sk = 1, in = the hidden rows) and the hidden gradient (w = wk^T: sq = 1,
 * sk = NH, in = the kernels' gradient) are both this product. */
#define WEIGHTED_ROWS(NV)                                                                                    \
    static inline void weighted_rows_##NV(const float *w, i64 sq, i64 sk, const float *bias, const float *in,  \
                                          i64 in_ld, i64 nk, float *out, i64 out_ld, i64 v)                    \
    {                                                                                                       \
        v8 a[4][NV];                                                                                        \
        for (int q = 0; q < 4; ++q)                                                                         \
            for (int u = 0; u < NV; ++u)                                                                    \
                a[q][u] = (v8){0} + (bias ? bias[q] : 0.0f);                                                \
        for (i64 k = 0; k < nk; ++k) {                                                                      \
            v8 x[NV];                                                                                       \
            for (int u = 0; u < NV; ++u)                                                                    \
                x[u] = ld_f32(in + k * in_ld + v + 8 * u);                                                  \
            for (int q = 0; q < 4; ++q)                                                                     \
                for (int u = 0; u < NV; ++u)                                                                \
                    a[q][u] += w[q * sq + k * sk] * x[u];                                                   \
        }                                                                                                   \
        for (int q = 0; q < 4; ++q)                                                                         \
            for (int u = 0; u < NV; ++u)                                                                    \
                st_f32(out + q * out_ld + v + 8 * u, a[q][u]);                                              \
    }
WEIGHTED_ROWS(1)
WEIGHTED_ROWS(2)

/* the product above for nout outputs over Wv pixels */
static void weighted_rows(const float *w, i64 sq, i64 sk, const float *bias, const float *in, i64 in_ld, i64 nk,
                          float *out, i64 out_ld, i64 nout, i64 Wv)
{
    i64 q = 0;
    for (; q + 4 <= nout; q += 4) {
        const float *wq = w + q * sq, *bq = bias ? bias + q : NULL;
        float *oq = out + q * out_ld;
        i64 v = 0;
        for (; v + 16 <= Wv; v += 16)
            weighted_rows_2(wq, sq, sk, bq, in, in_ld, nk, oq, out_ld, v);
        if (v < Wv)
            weighted_rows_1(wq, sq, sk, bq, in, in_ld, nk, oq, out_ld, v);
    }
    for (; q < nout; ++q)
        for (i64 v = 0; v < Wv; v += 8) {
            v8 a = (v8){0} + (bias ? bias[q] : 0.0f);
            for (i64 k = 0; k < nk; ++k)
                a += w[q * sq + k * sk] * ld_f32(in + k * in_ld + v);
            st_f32(out + q * out_ld + v, a);
        }
}

/* kP[n][M + v ..] = bias[n] + sum_m wk[n][m] hP[m][v ..] */
static void kernels(const dyn_bwd_geom *d, const dyn_bwd_ws *s)
{
    weighted_rows(d->wk, d->NH, 1, d->bias, s->hP, s->Wv, d->NH, s->kP + s->M, s->KW, d->G * d->K * d->K, s->Wv);
}

/* gkP[g K*K + i K + j][v ..] = sum_{c in g} goP[c][M + v ..] xrow_i[c][v + j ..] for the valid rows i,
 * four taps j at a time */
static void kernel_grads(const dyn_bwd_geom *d, const dyn_bwd_ws *s, const float *const *xr, i64 i0, i64 i1)
{
    const i64 K = d->K, KK = K * K, P = d->P, Wv = s->Wv, KW = s->KW, XW = s->XW, M = s->M;
    for (i64 g = 0; g < d->G; ++g) {
        float *og = s->gkP + g * KK * Wv;
        memset(og, 0, sizeof(float) * (size_t)(i0 * K * Wv));
        memset(og + i1 * K * Wv, 0, sizeof(float) * (size_t)((K - i1) * K * Wv));
        const float *gs = s->goP + g * P * KW + M;
        for (i64 i = i0; i < i1; ++i) {
            const float *xs = xr[i] + g * P * XW;
            float *o = og + i * K * Wv;
            for (i64 v = 0; v < Wv; v += 8) {
                i64 j = 0;
                for (; j + 4 <= K; j += 4) {
                    v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
                    for (i64 c = 0; c < P; ++c) {
                        const v8 gv = ld_f32(gs + c * KW + v);
                        const float *xc = xs + c * XW + v + j;
                        a0 += gv * ld_f32(xc), a1 += gv * ld_f32(xc + 1), a2 += gv * ld_f32(xc + 2);
                        a3 += gv * ld_f32(xc + 3);
                    }
                    st_f32(o + j * Wv + v, a0), st_f32(o + (j + 1) * Wv + v, a1);
                    st_f32(o + (j + 2) * Wv + v, a2), st_f32(o + (j + 3) * Wv + v, a3);
                }
                for (; j < K; ++j) {
                    v8 a = {0};
                    for (i64 c = 0; c < P; ++c)
                        a += ld_f32(gs + c * KW + v) * ld_f32(xs + c * XW + v + j);
                    st_f32(o + j * Wv + v, a);
                }
            }
        }
    }
}

/* input row i's gradient slot, channels [c, c + NC) of group g: += sum_j kP[g K*K + i K + j][M + X - j ..]
 * goP[c][M + X - j ..] (gather form: input column X receives from the outputs X - j) */
#define INPUT_GRADS(NC)                                                                                      \
    static inline void input_grads_##NC(const dyn_bwd_ws *s, float *o, const float *kr, const float *gs, i64 K) \
    {                                                                                                       \
        const i64 KW = s->KW, XW = s->XW;                                                                   \
        for (i64 v = 0; v < s->Wv; v += 8) {                                                                \
            v8 a[NC];                                                                                       \
            for (int c = 0; c < NC; ++c)                                                                    \
                a[c] = ld_f32(o + c * XW + v);                                                              \
            for (i64 j = 0; j < K; ++j) {                                                                   \
                const v8 k = ld_f32(kr + j * KW + v - j);                                                   \
                for (int c = 0; c < NC; ++c)                                                                \
                    a[c] += k * ld_f32(gs + c * KW + v - j);                                                \
            }                                                                                               \
            for (int c = 0; c < NC; ++c)                                                                    \
                st_f32(o + c * XW + v, a[c]);                                                               \
        }                                                                                                   \
    }
INPUT_GRADS(1)
INPUT_GRADS(2)
INPUT_GRADS(4)

static void input_grads(const dyn_bwd_geom *d, const dyn_bwd_ws *s, float *gxr, i64 i)
{
    const i64 K = d->K, KK = K * K, P = d->P, KW = s->KW, XW = s->XW, M = s->M, p = K / 2;
    for (i64 g = 0; g < d->G; ++g) {
        const float *kr = s->kP + (g * KK + i * K) * KW + M + p;
        for (i64 c = g * P; c < (g + 1) * P;) {
            const i64 left = (g + 1) * P - c;
            float *o = gxr + c * XW + p;
            const float *gs = s->goP + c * KW + M + p;
            if (left >= 4)
                input_grads_4(s, o, kr, gs, K), c += 4;
            else if (left >= 2)
                input_grads_2(s, o, kr, gs, K), c += 2;
            else
                input_grads_1(s, o, kr, gs, K), c += 1;
        }
    }
}

/* ghP[m][v ..] = sum_n wk[n][m] gkP[n][v ..], then gh's row */
static void hidden_grads(const dyn_bwd_geom *d, const dyn_bwd_ws *s, i64 r)
{
    const i64 NH = d->NH, Wv = s->Wv;
    weighted_rows(d->wk, 1, NH, NULL, s->gkP, Wv, d->G * d->K * d->K, s->ghP, Wv, NH, Wv);
    float *out = d->gh + r * d->W * NH;
    for (i64 w = 0; w < d->W; ++w)
        for (i64 q = 0; q < NH; ++q)
            out[w * NH + q] = s->ghP[q * Wv + w];
}

/* acc[n][m] += sum over the row of gkP[n] hP[m]; acc[n][NH] += sum of gkP[n] (lane sums): two kernel
 * values and four hidden channels at a time */
static void weight_grads(const dyn_bwd_geom *d, const dyn_bwd_ws *s)
{
    const i64 NK = d->G * d->K * d->K, NH = d->NH, Wv = s->Wv, row = (NH + 1) * 8;
    i64 n = 0;
    for (; n + 2 <= NK; n += 2) {
        const float *g0 = s->gkP + n * Wv, *g1 = g0 + Wv;
        float *acc0 = s->acc + n * row, *acc1 = acc0 + row;
        i64 m = 0;
        for (; m + 4 <= NH; m += 4) {
            float *p0 = acc0 + 8 * m, *p1 = acc1 + 8 * m;
            v8 a0 = ld_f32(p0), a1 = ld_f32(p0 + 8), a2 = ld_f32(p0 + 16), a3 = ld_f32(p0 + 24);
            v8 b0 = ld_f32(p1), b1 = ld_f32(p1 + 8), b2 = ld_f32(p1 + 16), b3 = ld_f32(p1 + 24);
            const float *h = s->hP + m * Wv;
            for (i64 v = 0; v < Wv; v += 8) {
                const v8 x0 = ld_f32(g0 + v), x1 = ld_f32(g1 + v);
                const v8 h0 = ld_f32(h + v), h1 = ld_f32(h + Wv + v), h2 = ld_f32(h + 2 * Wv + v),
                         h3 = ld_f32(h + 3 * Wv + v);
                a0 += x0 * h0, a1 += x0 * h1, a2 += x0 * h2, a3 += x0 * h3;
                b0 += x1 * h0, b1 += x1 * h1, b2 += x1 * h2, b3 += x1 * h3;
            }
            st_f32(p0, a0), st_f32(p0 + 8, a1), st_f32(p0 + 16, a2), st_f32(p0 + 24, a3);
            st_f32(p1, b0), st_f32(p1 + 8, b1), st_f32(p1 + 16, b2), st_f32(p1 + 24, b3);
        }
        for (; m <= NH; ++m) /* m == NH: the bias' sums */
            for (int q = 0; q < 2; ++q) {
                const float *gk = q ? g1 : g0;
                float *pa = (q ? acc1 : acc0) + 8 * m;
                v8 a = ld_f32(pa);
                for (i64 v = 0; v < Wv; v += 8)
                    a += m < NH ? ld_f32(gk + v) * ld_f32(s->hP + m * Wv + v) : ld_f32(gk + v);
                st_f32(pa, a);
            }
    }
    for (; n < NK; ++n)
        for (i64 m = 0; m <= NH; ++m) {
            const float *gk = s->gkP + n * Wv;
            float *pa = s->acc + n * row + 8 * m;
            v8 a = ld_f32(pa);
            for (i64 v = 0; v < Wv; v += 8)
                a += m < NH ? ld_f32(gk + v) * ld_f32(s->hP + m * Wv + v) : ld_f32(gk + v);
            st_f32(pa, a);
        }
}

static void output_row(const dyn_bwd_geom *d, dyn_bwd_ws *s, i64 r)
{
    const i64 H = d->H, W = d->W, K = d->K, p = K / 2, b = r / H, oh = r % H;
    i64 i0, i1;
    tap_range(oh, p, 1, K, H, &i0, &i1);
    planar(d->hidden + r * W * d->NH, W, d->NH, s->hP, s->Wv, 0);
    planar(d->go + r * W * d->C, W, d->C, s->goP, s->KW, s->M);
    const float *xr[64];
    for (i64 i = i0; i < i1; ++i)
        xr[i] = x_slot(d, s, b * H + oh + i - p);
    kernels(d, s);
    kernel_grads(d, s, xr, i0, i1);
    for (i64 i = i0; i < i1; ++i)
        input_grads(d, s, gx_slot(d, s, b * H + oh + i - p), i);
    hidden_grads(d, s, r);
    weight_grads(d, s);
}

static int ws_alloc(const dyn_bwd_geom *d, dyn_bwd_ws *s)
{
    const i64 K = d->K, C = d->C, NK = d->G * K * K, NH = d->NH;
    s->Wv = (d->W + 7) / 8 * 8;
    s->XW = s->Wv + K - 1;
    s->M = K - 1;
    s->KW = s->Wv + 2 * s->M;
    const size_t floats = (size_t)(2 * K * C * s->XW + NH * s->Wv + C * s->KW + NK * s->KW + NK * s->Wv + NH * s->Wv +
                                   8 * NK * (NH + 1));
    float *f = (float *)calloc(floats, sizeof(float));
    s->xtag = (i64 *)malloc(sizeof(i64) * (size_t)(2 * K));
    if (!f || !s->xtag) {
        free(f), free(s->xtag);
        return 2;
    }
    s->xs = f;
    s->gxs = s->xs + K * C * s->XW;
    s->hP = s->gxs + K * C * s->XW;
    s->goP = s->hP + NH * s->Wv;
    s->kP = s->goP + C * s->KW;
    s->gkP = s->kP + NK * s->KW;
    s->ghP = s->gkP + NK * s->Wv;
    s->acc = s->ghP + NH * s->Wv;
    s->gtag = s->xtag + K;
    for (i64 k = 0; k < 2 * K; ++k)
        s->xtag[k] = -1;
    return 0;
}

/* the lane sums of acc into sums (NK x NH weight sums, then NK bias sums), acc zeroed */
static void flush_sums(const dyn_bwd_geom *d, dyn_bwd_ws *s, float *sums)
{
    const i64 NK = d->G * d->K * d->K, NH = d->NH;
    for (i64 n = 0; n < NK; ++n)
        for (i64 m = 0; m <= NH; ++m) {
            float *a = s->acc + (n * (NH + 1) + m) * 8;
            const float sum = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
            sums[m < NH ? n * NH + m : NK * NH + n] = sum;
            memset(a, 0, sizeof(float) * 8);
        }
}

/* bands parity, parity + 2, ...: the [band0, band1) of them. Band k's weight and bias gradient
 * sums go to sums + k (NK NH + NK) (the caller adds them in band order: the result does not
 * depend on how the bands were split over threads). Returns 2 when the buffers cannot be
 * allocated, 3 for K > 63. */
int lightsr_dyn_fused_bwd_cl(const dyn_bwd_geom *d, float *sums, i64 parity, i64 band0, i64 band1)
{
    if (d->K > 63)
        return 3;
    dyn_bwd_ws s;
    if (ws_alloc(d, &s))
        return 2;
    const i64 rows = d->B * d->H, NK = d->G * d->K * d->K;
    for (i64 l = band0; l < band1; ++l) {
        const i64 k = 2 * l + parity, r0 = k * d->band, r1 = r0 + d->band < rows ? r0 + d->band : rows;
        for (i64 r = r0; r < r1; ++r)
            output_row(d, &s, r);
        for (i64 slot = 0; slot < d->K; ++slot)
            gx_flush(d, &s, slot);
        flush_sums(d, &s, sums + k * (NK * d->NH + NK));
    }
    free(s.xs), free(s.xtag);
    return 0;
}
