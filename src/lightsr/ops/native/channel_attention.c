/* The transposed (channel) attention of DLGSANet's SparseGSA for heads of 8 channels, at inference,
 * on windows of a dense channels-last qkv map (CPU, float32): the whole map, or the overlapping
 * windows of the test-time local converter (TLC) with their average.
 *
 * qkv is (B, H, W, 3C) pixel rows: q = channels [0, C), k = [C, 2C), v = [2C, 3C); heads of d = 8
 * channels. Windows: wins[4 n + (0, 1, 2, 3)] = (top, left, height, width), n < nwin; a task
 * t = n * B + b is window n of image b (the order in which the PyTorch path stacks them).
 *
 *   lightsr_ca_gram_d8   gram[t][h][i][j] = sum_p q[p][8h + i] k[p][8h + j]     over the window's pixels p
 *                        ss[t][c]         = sum_p q[p][c]^2 (c < C), k[p][c - C]^2 (C <= c < 2C)
 *   (the caller turns these into the attention maps A[t][h] (8 x 8) with the norms, temperature and
 *    activation, and passes them transposed: at[t][h][j][i] = A[t][h][i][j])
 *   lightsr_ca_apply_d8  out[b][y][x][8h + i] = cov[y][x] * sum over the windows n containing (y, x)
 *                        of sum_j A[n B + b][h][i][j] v[b][y][x][8h + j]
 *
 * cov is the inverse of the number of windows covering each pixel. The PyTorch path makes one
 * (8-wide) matrix product per head and window for the Gram matrices and a block-diagonal C x C
 * product for A v: thousands of tiny BLAS calls per image, layout copies of every window and a
 * canvas pass per window. Here the Gram matrices of a block of 32 pixels are accumulated head by
 * head while the block stays in the L1 cache (ten accumulators: the eight rows of the 8 x 8 matrix
 * and the two sums of squares), and A v is computed once per pixel and window straight into the
 * output row. gram: tasks [t0, t1) (each its own output); apply: output rows [r0, r1) of B * H.
 */
#include <stdlib.h>

#include "simd.h"

typedef struct {
    i64 B, H, W, C, nwin;
} ca_geom;

#define BLOCK 32

int lightsr_ca_gram_d8(const float *qkv, const i64 *wins, float *gram, float *ss, const ca_geom *g, i64 t0, i64 t1)
{
    const i64 C = g->C, heads = C / 8, row = g->W * 3 * C;
    for (i64 t = t0; t < t1; ++t) {
        const i64 n = t / g->B, b = t % g->B;
        const i64 top = wins[4 * n], left = wins[4 * n + 1], wh = wins[4 * n + 2], ww = wins[4 * n + 3];
        float *gt = gram + t * heads * 64, *st = ss + t * 2 * C;
        memset(gt, 0, sizeof(float) * (size_t)(heads * 64));
        memset(st, 0, sizeof(float) * (size_t)(2 * C));
        for (i64 y = top; y < top + wh; ++y) {
            const float *pr = qkv + (b * g->H + y) * row + left * 3 * C;
            for (i64 x0 = 0; x0 < ww; x0 += BLOCK) {
                const i64 nx = ww - x0 < BLOCK ? ww - x0 : BLOCK;
                for (i64 h = 0; h < heads; ++h) {
                    float *gh = gt + h * 64;
                    v8 a0 = ld_f32(gh), a1 = ld_f32(gh + 8), a2 = ld_f32(gh + 16), a3 = ld_f32(gh + 24);
                    v8 a4 = ld_f32(gh + 32), a5 = ld_f32(gh + 40), a6 = ld_f32(gh + 48), a7 = ld_f32(gh + 56);
                    v8 sq = ld_f32(st + 8 * h), sk = ld_f32(st + C + 8 * h);
                    for (i64 x = x0; x < x0 + nx; ++x) {
                        const float *q = pr + x * 3 * C + 8 * h, *k = q + C;
                        const v8 qv = ld_f32(q), kv = ld_f32(k);
                        sq += qv * qv;
                        sk += kv * kv;
                        a0 += q[0] * kv;
                        a1 += q[1] * kv;
                        a2 += q[2] * kv;
                        a3 += q[3] * kv;
                        a4 += q[4] * kv;
                        a5 += q[5] * kv;
                        a6 += q[6] * kv;
                        a7 += q[7] * kv;
                    }
                    st_f32(gh, a0), st_f32(gh + 8, a1), st_f32(gh + 16, a2), st_f32(gh + 24, a3);
                    st_f32(gh + 32, a4), st_f32(gh + 40, a5), st_f32(gh + 48, a6), st_f32(gh + 56, a7);
                    st_f32(st + 8 * h, sq);
                    st_f32(st + C + 8 * h, sk);
                }
            }
        }
    }
    return 0;
}

/* acc (the pixels [x0, x1) of one output row, C floats each) += A v over window task t's maps */
static void apply_window(const float *vrow, const float *at, float *acc, i64 C, i64 x0, i64 x1)
{
    const i64 heads = C / 8;
    for (i64 h = 0; h < heads; ++h) {
        const float *a = at + h * 64;
        const v8 c0 = ld_f32(a), c1 = ld_f32(a + 8), c2 = ld_f32(a + 16), c3 = ld_f32(a + 24);
        const v8 c4 = ld_f32(a + 32), c5 = ld_f32(a + 40), c6 = ld_f32(a + 48), c7 = ld_f32(a + 56);
        for (i64 x = x0; x < x1; ++x) {
            const float *v = vrow + x * 3 * C + 8 * h;
            float *o = acc + x * C + 8 * h;
            v8 s = ld_f32(o) + c0 * v[0];
            s += c1 * v[1];
            s += c2 * v[2];
            s += c3 * v[3];
            s += c4 * v[4];
            s += c5 * v[5];
            s += c6 * v[6];
            s += c7 * v[7];
            st_f32(o, s);
        }
    }
}

int lightsr_ca_apply_d8(const float *qkv, const i64 *wins, const float *at, const float *cov, float *out,
                        const ca_geom *g, i64 r0, i64 r1)
{
    const i64 C = g->C, W = g->W, row = W * 3 * C;
    float *acc = (float *)malloc(sizeof(float) * (size_t)(W * C));
    if (!acc)
        return 2;
    for (i64 r = r0; r < r1; ++r) {
        const i64 b = r / g->H, y = r % g->H;
        const float *vrow = qkv + r * row + 2 * C;
        memset(acc, 0, sizeof(float) * (size_t)(W * C));
        for (i64 n = 0; n < g->nwin; ++n) {
            const i64 top = wins[4 * n], left = wins[4 * n + 1], wh = wins[4 * n + 2], ww = wins[4 * n + 3];
            if (y >= top && y < top + wh)
                apply_window(vrow, at + (n * g->B + b) * (C / 8) * 64, acc, C, left, left + ww);
        }
        float *orow = out + r * W * C;
        const float *crow = cov + y * W;
        for (i64 x = 0; x < W; ++x) {
            const v8 s = (v8){0} + crow[x];
            for (i64 c = 0; c < C; c += 8)
                st_f32(orow + x * C + c, ld_f32(acc + x * C + c) * s);
        }
    }
    free(acc);
    return 0;
}
