/* Elementwise kernels and sums on dense storage (CPU).
 *
 *   lightsr_add_f32_bf16   out[i] = r[i] + y[i] for i in [i0, i1): a bfloat16 branch (a product under
 *                          CPU autocast) added onto a float32 residual stream (LAMNet keeps its stream
 *                          in float32); out may be r. aten's mixed-dtype add_ took 1.8 ms for a
 *                          64 x 180 x 320 map on a Zen 4 EPYC, about twice its float32 + float32 add
 *                          that reads more bytes (the casting loop, not memory, bounds it).
 */
#include "simd.h"

#define SUM_MAX 512    /* channels (the Python wrapper leaves wider matrices to aten) */
#define SUM_AHEAD 4096 /* floats (16 KiB) prefetched ahead: at 128 channels the hardware prefetcher fell behind */

/* out[c] = sum over rows r in [r0, r1) of x[r * C + c], C <= SUM_MAX: the bias gradient of a 1x1
 * convolution (the column sums of its (pixels, C) output gradient), in one pass over the rows, two
 * rows per step into two sets of accumulators: 1.5x aten's sum(0) on a (36864, 128) gradient
 * (a Zen 4 EPYC: benchmarks/ops_speed.py --backward --only column). */
int lightsr_column_sum_f32(const float *x, i64 C, float *out, i64 r0, i64 r1)
{
    if (C > SUM_MAX)
        return 1;
    const i64 V = C / 8;
    v8 a[SUM_MAX / 8], b[SUM_MAX / 8];
    float tail[8] = {0};
    for (i64 v = 0; v < V; ++v)
        a[v] = b[v] = (v8){0};
    i64 r = r0;
    for (; r + 2 <= r1; r += 2) {
        const float *p = x + r * C;
        for (i64 e = 0; e < 2 * C; e += 16)
            __builtin_prefetch(p + SUM_AHEAD + e);
        for (i64 v = 0; v < V; ++v)
            a[v] += ld_f32(p + 8 * v), b[v] += ld_f32(p + C + 8 * v);
        for (i64 c = 8 * V; c < C; ++c)
            tail[c - 8 * V] += p[c] + p[C + c];
    }
    for (; r < r1; ++r) {
        for (i64 v = 0; v < V; ++v)
            a[v] += ld_f32(x + r * C + 8 * v);
        for (i64 c = 8 * V; c < C; ++c)
            tail[c - 8 * V] += x[r * C + c];
    }
    for (i64 v = 0; v < V; ++v)
        st_f32(out + 8 * v, a[v] + b[v]);
    for (i64 c = 8 * V; c < C; ++c)
        out[c] = tail[c - 8 * V];
    return 0;
}

int lightsr_add_f32_bf16(const float *r, const uint16_t *y, float *out, i64 i0, i64 i1)
{
    i64 i = i0;
    for (; i + 32 <= i1; i += 32) {
        const v8 a0 = ld_f32(r + i) + ld_bf16(y + i), a1 = ld_f32(r + i + 8) + ld_bf16(y + i + 8);
        const v8 a2 = ld_f32(r + i + 16) + ld_bf16(y + i + 16), a3 = ld_f32(r + i + 24) + ld_bf16(y + i + 24);
        st_f32(out + i, a0), st_f32(out + i + 8, a1), st_f32(out + i + 16, a2), st_f32(out + i + 24, a3);
    }
    for (; i < i1; ++i)
        out[i] = r[i] + lds_bf16(y + i);
    return 0;
}

/* out[p][c] = a[p * sa + c] + b[p * sb + c] for pixels p in [p0, p1), c < C: the sum of two bfloat16
 * maps whose pixels are evenly strided (channel slices of channels-last maps), written densely and
 * rounded once (aten's bf16 + bf16); LGUN's MLHA adds a channel slice of its input to the previous
 * part's output three times per block, where aten's strided bfloat16 add took 1.5 ms for a
 * 16 x 180 x 320 map, more than widening both to float32 and adding them. */
int lightsr_add_bf16(const uint16_t *a, i64 sa, const uint16_t *b, i64 sb, uint16_t *out, i64 C, i64 p0, i64 p1)
{
    for (i64 p = p0; p < p1; ++p) {
        const uint16_t *ap = a + p * sa, *bp = b + p * sb;
        uint16_t *op = out + p * C;
        i64 c = 0;
        for (; c + 8 <= C; c += 8)
            st_bf16(op + c, ld_bf16(ap + c) + ld_bf16(bp + c));
        for (; c < C; ++c)
            sts_bf16(op + c, lds_bf16(ap + c) + lds_bf16(bp + c));
    }
    return 0;
}
