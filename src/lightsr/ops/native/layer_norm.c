/* LayerNorm over the channels of dense channels-last rows (CPU, float32):
 *
 *   y[r, c] = (x[r, c] - mean_r) / sqrt(var_r + eps) * w[c] + b[c]
 *
 * mean and biased variance over the C channels of each row r (a pixel), two passes over the row
 * (sum, then the sum of squared deviations), as the reference formula. aten's kernel spends most of
 * its time on per-row set-up for rows this short (48-90 channels); here a row is a handful of
 * vectors kept in the L1 cache between its three passes. Rows [r0, r1); return code 0.
 */
#include "simd.h"

typedef struct {
    i64 C;
    double eps;
} ln_geom;

static inline float hsum(v8 v)
{
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

int lightsr_ln_rows_f32(const float *x, const float *w, const float *b, float *y, const ln_geom *g, i64 r0, i64 r1)
{
    const i64 C = g->C, CV = C - C % 8;
    const float eps = (float)g->eps, inv_c = 1.0f / (float)C;
    for (i64 r = r0; r < r1; ++r) {
        const float *xr = x + r * C;
        float *yr = y + r * C;
        v8 s = {0};
        for (i64 c = 0; c < CV; c += 8)
            s += ld_f32(xr + c);
        float sum = hsum(s);
        for (i64 c = CV; c < C; ++c)
            sum += xr[c];
        const float mean = sum * inv_c;
        const v8 m = (v8){0} + mean;
        v8 q = {0};
        for (i64 c = 0; c < CV; c += 8) {
            const v8 d = ld_f32(xr + c) - m;
            q += d * d;
        }
        float var = hsum(q);
        for (i64 c = CV; c < C; ++c)
            var += (xr[c] - mean) * (xr[c] - mean);
        const float rstd = 1.0f / sqrtf(var * inv_c + eps);
        const v8 rs = (v8){0} + rstd;
        for (i64 c = 0; c < CV; c += 8)
            st_f32(yr + c, (ld_f32(xr + c) - m) * rs * ld_f32(w + c) + ld_f32(b + c));
        for (i64 c = CV; c < C; ++c)
            yr[c] = (xr[c] - mean) * rstd * w[c] + b[c];
    }
    return 0;
}
