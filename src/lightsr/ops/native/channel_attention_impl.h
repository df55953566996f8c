/* Body of the channel attention kernels for one storage type; included by channel_attention.c with T,
 * SFX, LD / ST (8-wide float32 vectors) and LANE(p, v, i) (element i of the vector v loaded from p). */

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SFX)

int FN(lightsr_ca_gram_d8)(const T *qkv, const i64 *wins, float *gram, float *ss, const ca_geom *g, i64 t0, i64 t1)
{
    const i64 C = g->C, heads = C / 8, row = g->W * 3 * C;
    for (i64 t = t0; t < t1; ++t) {
        const i64 n = t / g->B, b = t % g->B;
        const i64 top = wins[4 * n], left = wins[4 * n + 1], wh = wins[4 * n + 2], ww = wins[4 * n + 3];
        float *gt = gram + t * heads * 64, *st = ss + t * 2 * C;
        memset(gt, 0, sizeof(float) * (size_t)(heads * 64));
        memset(st, 0, sizeof(float) * (size_t)(2 * C));
        for (i64 y = top; y < top + wh; ++y) {
            const T *pr = qkv + (b * g->H + y) * row + left * 3 * C;
            for (i64 x0 = 0; x0 < ww; x0 += BLOCK) {
                const i64 nx = ww - x0 < BLOCK ? ww - x0 : BLOCK;
                for (i64 h = 0; h < heads; ++h) {
                    float *gh = gt + h * 64;
                    v8 a0 = ld_f32(gh), a1 = ld_f32(gh + 8), a2 = ld_f32(gh + 16), a3 = ld_f32(gh + 24);
                    v8 a4 = ld_f32(gh + 32), a5 = ld_f32(gh + 40), a6 = ld_f32(gh + 48), a7 = ld_f32(gh + 56);
                    v8 sq = ld_f32(st + 8 * h), sk = ld_f32(st + C + 8 * h);
                    for (i64 x = x0; x < x0 + nx; ++x) {
                        const T *q = pr + x * 3 * C + 8 * h, *k = q + C;
                        const v8 qv = LD(q), kv = LD(k);
                        sq += qv * qv;
                        sk += kv * kv;
                        a0 += LANE(q, qv, 0) * kv;
                        a1 += LANE(q, qv, 1) * kv;
                        a2 += LANE(q, qv, 2) * kv;
                        a3 += LANE(q, qv, 3) * kv;
                        a4 += LANE(q, qv, 4) * kv;
                        a5 += LANE(q, qv, 5) * kv;
                        a6 += LANE(q, qv, 6) * kv;
                        a7 += LANE(q, qv, 7) * kv;
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
static void FN(apply_window)(const T *vrow, const float *at, float *acc, i64 C, i64 x0, i64 x1)
{
    const i64 heads = C / 8;
    for (i64 h = 0; h < heads; ++h) {
        const float *a = at + h * 64;
        const v8 c0 = ld_f32(a), c1 = ld_f32(a + 8), c2 = ld_f32(a + 16), c3 = ld_f32(a + 24);
        const v8 c4 = ld_f32(a + 32), c5 = ld_f32(a + 40), c6 = ld_f32(a + 48), c7 = ld_f32(a + 56);
        for (i64 x = x0; x < x1; ++x) {
            const T *v = vrow + x * 3 * C + 8 * h;
            const v8 vv = LD(v);
            float *o = acc + x * C + 8 * h;
            v8 s = ld_f32(o) + c0 * LANE(v, vv, 0);
            s += c1 * LANE(v, vv, 1);
            s += c2 * LANE(v, vv, 2);
            s += c3 * LANE(v, vv, 3);
            s += c4 * LANE(v, vv, 4);
            s += c5 * LANE(v, vv, 5);
            s += c6 * LANE(v, vv, 6);
            s += c7 * LANE(v, vv, 7);
            st_f32(o, s);
        }
    }
}

int FN(lightsr_ca_apply_d8)(const T *qkv, const i64 *wins, const float *at, const float *cov, T *out,
                        const ca_geom *g, i64 r0, i64 r1)
{
    const i64 C = g->C, W = g->W, row = W * 3 * C;
    float *acc = (float *)malloc(sizeof(float) * (size_t)(W * C));
    if (!acc)
        return 2;
    for (i64 r = r0; r < r1; ++r) {
        const i64 b = r / g->H, y = r % g->H;
        const T *vrow = qkv + r * row + 2 * C;
        memset(acc, 0, sizeof(float) * (size_t)(W * C));
        for (i64 n = 0; n < g->nwin; ++n) {
            const i64 top = wins[4 * n], left = wins[4 * n + 1], wh = wins[4 * n + 2], ww = wins[4 * n + 3];
            if (y >= top && y < top + wh)
                FN(apply_window)(vrow, at + (n * g->B + b) * (C / 8) * 64, acc, C, left, left + ww);
        }
        T *orow = out + r * W * C;
        const float *crow = cov + y * W;
        for (i64 x = 0; x < W; ++x) {
            const v8 s = (v8){0} + crow[x];
            for (i64 c = 0; c < C; c += 8)
                ST(orow + x * C + c, ld_f32(acc + x * C + c) * s);
        }
    }
    free(acc);
    return 0;
}

#undef FN
#undef CAT
#undef CAT_
