/* Body of the depth-wise convolution kernels for one storage type; included by depthwise.c once
 * per type with T (element type), SFX (name suffix), LD / ST (8-wide load / store as float32
 * vectors) and LDS / STS (scalar). See depthwise.c for the semantics. */

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SFX)

/* acc[c] = bias[c] + sum over the valid taps of w[tap][c] * x[pixel + tap offset][c]; xb points at
 * the image's first element. Channels in blocks of 32 (four vectors kept in registers across the
 * taps), then 8, then one at a time. */
static inline void FN(conv_pixel)(const T *xb, const float *w, const float *bias, float *acc, const dw_geom *g,
                                  i64 oh, i64 ow, i64 i0, i64 i1, i64 j0, i64 j1)
{
    const i64 C = g->C, KW = g->KW, xh = g->xh, xw = g->xw;
    const v8 zero = {0};
    i64 c = 0;
    for (; c + 32 <= C; c += 32) {
        v8 a0 = bias ? ld_f32(bias + c) : zero, a1 = bias ? ld_f32(bias + c + 8) : zero;
        v8 a2 = bias ? ld_f32(bias + c + 16) : zero, a3 = bias ? ld_f32(bias + c + 24) : zero;
        for (i64 i = i0; i < i1; ++i) {
            const T *xr = xb + (oh + i * g->DH - g->PH) * xh + c;
            const float *wr = w + i * KW * C + c;
            for (i64 j = j0; j < j1; ++j) {
                const T *xp = xr + (ow + j * g->DW - g->PW) * xw;
                const float *wp = wr + j * C;
                a0 += ld_f32(wp) * LD(xp);
                a1 += ld_f32(wp + 8) * LD(xp + 8);
                a2 += ld_f32(wp + 16) * LD(xp + 16);
                a3 += ld_f32(wp + 24) * LD(xp + 24);
            }
        }
        st_f32(acc + c, a0);
        st_f32(acc + c + 8, a1);
        st_f32(acc + c + 16, a2);
        st_f32(acc + c + 24, a3);
    }
    for (; c + 8 <= C; c += 8) {
        v8 a0 = bias ? ld_f32(bias + c) : zero;
        for (i64 i = i0; i < i1; ++i)
            for (i64 j = j0; j < j1; ++j)
                a0 += ld_f32(w + (i * KW + j) * C + c) * LD(xb + (oh + i * g->DH - g->PH) * xh + (ow + j * g->DW - g->PW) * xw + c);
        st_f32(acc + c, a0);
    }
    if (c < C && C >= 8) { /* the last channels as one vector overlapping the previous block */
        c = C - 8;
        v8 a0 = bias ? ld_f32(bias + c) : zero;
        for (i64 i = i0; i < i1; ++i)
            for (i64 j = j0; j < j1; ++j)
                a0 += ld_f32(w + (i * KW + j) * C + c) * LD(xb + (oh + i * g->DH - g->PH) * xh + (ow + j * g->DW - g->PW) * xw + c);
        st_f32(acc + c, a0);
        return;
    }
    for (; c < C; ++c) {
        float a = bias ? bias[c] : 0.0f;
        for (i64 i = i0; i < i1; ++i)
            for (i64 j = j0; j < j1; ++j)
                a += w[(i * KW + j) * C + c] * LDS(xb + (oh + i * g->DH - g->PH) * xh + (ow + j * g->DW - g->PW) * xw + c);
        acc[c] = a;
    }
}

static inline void FN(store_row)(T *dst, const float *src, i64 n)
{
    i64 c = 0;
    for (; c + 8 <= n; c += 8)
        ST(dst + c, ld_f32(src + c));
    for (; c < n; ++c)
        STS(dst + c, src[c]);
}

static inline void FN(load_row)(float *dst, const T *src, i64 n)
{
    i64 c = 0;
    for (; c + 8 <= n; c += 8)
        st_f32(dst + c, LD(src + c));
    for (; c < n; ++c)
        dst[c] = LDS(src + c);
}

/* the gate of one pixel's C convolution outputs acc (float32) into out (float32 or T), eight channels at
 * a time; OUT_ST / OUT_STS store a vector / a value */
#define GATE_LOOP(out, OUT_ST, OUT_STS)                                                                       \
    do {                                                                                                      \
        i64 c = 0;                                                                                            \
        for (; c + 8 <= m; c += 8) {                                                                          \
            const v8 x1 = ld_f32(acc + c), x2 = ld_f32(acc + m + c), ge = gelu8(x1);                          \
            OUT_ST((out) + c, gate == GATE_GELU ? ge * x2 : ge * x1);                                         \
            if (gate != GATE_GELU)                                                                            \
                OUT_ST((out) + m + c, ge * x2);                                                               \
        }                                                                                                     \
        for (; c < m; ++c) {                                                                                  \
            const float ge = gelu1(acc[c]);                                                                   \
            OUT_STS((out) + c, gate == GATE_GELU ? ge * acc[m + c] : ge * acc[c]);                            \
            if (gate != GATE_GELU)                                                                            \
                OUT_STS((out) + m + c, ge * acc[m + c]);                                                      \
        }                                                                                                     \
    } while (0)

/* the gate applied to one pixel's C convolution outputs acc, into yp: float32 output straight from
 * the vectors; bfloat16 through tmp (2 C floats: the GELU, the products, then one rounding pass; one
 * loop rounding as it goes was slower in a scratch timing on a Zen 4 EPYC) */
static inline void FN(epilogue)(const float *acc, float *tmp, T *yp, i64 C, i64 gate)
{
    const i64 m = C / 2;
    if (gate == GATE_NONE) {
        FN(store_row)(yp, acc, C);
    } else if (sizeof(T) == sizeof(float)) {
        GATE_LOOP((float *)(void *)yp, st_f32, sts_f32);
    } else {
        i64 c = 0;
        for (; c + 8 <= m; c += 8)
            st_f32(tmp + c, gelu8(ld_f32(acc + c)));
        for (; c < m; ++c)
            tmp[c] = gelu1(acc[c]);
        if (gate == GATE_GELU) {
            for (c = 0; c < m; ++c)
                tmp[c] *= acc[m + c];
            FN(store_row)(yp, tmp, m);
            return;
        }
        for (c = 0; c < m; ++c) {
            tmp[C + c] = tmp[c] * acc[c];
            tmp[C + m + c] = tmp[c] * acc[m + c];
        }
        FN(store_row)(yp, tmp + C, C);
    }
}

/* ---- 3 x 3 kernels (stride 1, padding 1, no dilation): a whole output row per channel block ----
 *
 * The generic per-pixel loop reads a weight vector and an input vector for every multiply-add;
 * on CPUs that load one 256-bit vector per cycle (AMD Zen 1) that halves the rate. Here eight
 * neighbouring output pixels of a channel block are accumulated in registers, kernel row by kernel
 * row: three weight vectors and ten input vectors per row for 24 multiply-adds (0.54 loads each),
 * eight independent accumulators (enough to hide the FMA latency), 13 vector registers in all. The
 * row's outputs go to a row buffer (W x C floats), from which the gates are applied pixel by pixel. */

/* Accumulators of consecutive output pixels += one kernel row (w0 x[-1] + w1 x[0] + w2 x[+1]), as
 * separate multiply-adds (one FMA each) while the input columns stream through one register: each
 * input vector is loaded once and feeds up to three accumulators. P points at the input column left
 * of the first output pixel; WR at the kernel row's three weight vectors (C floats apart). */
#define TAPS_PROLOGUE(P, WR)                                                                             \
    const v8 w0_ = ld_f32(WR), w1_ = ld_f32((WR) + C), w2_ = ld_f32((WR) + 2 * C);                        \
    const T *p_ = (P);                                                                                    \
    v8 x_
#define IN(k) (x_ = LD(p_ + (k) * xw))
#define ROW8(P, WR, A0, A1, A2, A3, A4, A5, A6, A7)                                                       \
    do {                                                                                                  \
        TAPS_PROLOGUE(P, WR);                                                                             \
        IN(0); A0 += w0_ * x_;                                                                            \
        IN(1); A0 += w1_ * x_; A1 += w0_ * x_;                                                            \
        IN(2); A0 += w2_ * x_; A1 += w1_ * x_; A2 += w0_ * x_;                                            \
        IN(3); A1 += w2_ * x_; A2 += w1_ * x_; A3 += w0_ * x_;                                            \
        IN(4); A2 += w2_ * x_; A3 += w1_ * x_; A4 += w0_ * x_;                                            \
        IN(5); A3 += w2_ * x_; A4 += w1_ * x_; A5 += w0_ * x_;                                            \
        IN(6); A4 += w2_ * x_; A5 += w1_ * x_; A6 += w0_ * x_;                                            \
        IN(7); A5 += w2_ * x_; A6 += w1_ * x_; A7 += w0_ * x_;                                            \
        IN(8); A6 += w2_ * x_; A7 += w1_ * x_;                                                            \
        IN(9); A7 += w2_ * x_;                                                                            \
    } while (0)
#define ROW4(P, WR, A0, A1, A2, A3)                                                                       \
    do {                                                                                                  \
        TAPS_PROLOGUE(P, WR);                                                                             \
        IN(0); A0 += w0_ * x_;                                                                            \
        IN(1); A0 += w1_ * x_; A1 += w0_ * x_;                                                            \
        IN(2); A0 += w2_ * x_; A1 += w1_ * x_; A2 += w0_ * x_;                                            \
        IN(3); A1 += w2_ * x_; A2 += w1_ * x_; A3 += w0_ * x_;                                            \
        IN(4); A2 += w2_ * x_; A3 += w1_ * x_;                                                            \
        IN(5); A3 += w2_ * x_;                                                                            \
    } while (0)

/* output columns [w0, w1) of row oh, channels [c, c + 8), into buf (pixels bs floats apart): eight
 * pixels per step, then four, then one */
static void FN(row_3x3_block)(const T *xb, const float *w, const float *bias, float *buf, i64 bs, const dw_geom *g,
                              i64 oh, i64 c, i64 w0, i64 w1)
{
    const i64 C = g->C, W = g->W, H = g->H, xw = g->xw;
    const v8 zero = {0};
    const v8 bv = bias ? ld_f32(bias + c) : zero;
    int rows[3], n = 0; /* the kernel rows inside the image */
    for (int i = 0; i < 3; ++i)
        if (oh + i - 1 >= 0 && oh + i - 1 < H)
            rows[n++] = i;
    const T *xr[3];
    const float *wr[3];
    for (int k = 0; k < n; ++k) {
        xr[k] = xb + (oh + rows[k] - 1) * g->xh + c;
        wr[k] = w + rows[k] * 3 * C + c;
    }
    const i64 inner_end = w1 < W - 1 ? w1 : W - 1; /* columns with a right neighbour */
    i64 ow = w0 > 1 ? w0 : 1;
    for (; ow + 8 <= inner_end; ow += 8) {
        v8 a0 = bv, a1 = bv, a2 = bv, a3 = bv, a4 = bv, a5 = bv, a6 = bv, a7 = bv;
        for (int k = 0; k < n; ++k)
            ROW8(xr[k] + (ow - 1) * xw, wr[k], a0, a1, a2, a3, a4, a5, a6, a7);
        st_f32x8(buf + ow * bs + c, bs, a0, a1, a2, a3, a4, a5, a6, a7);
    }
    for (; ow + 4 <= inner_end; ow += 4) {
        v8 a0 = bv, a1 = bv, a2 = bv, a3 = bv;
        for (int k = 0; k < n; ++k)
            ROW4(xr[k] + (ow - 1) * xw, wr[k], a0, a1, a2, a3);
        float *o = buf + ow * bs + c;
        st_f32(o, a0);
        st_f32(o + bs, a1);
        st_f32(o + 2 * bs, a2);
        st_f32(o + 3 * bs, a3);
    }
    for (; ow < w1; ++ow) { /* the remaining columns of the range, the right border included */
        v8 a = bv;
        for (int k = 0; k < n; ++k) {
            const T *p = xr[k] + ow * xw;
            a += ld_f32(wr[k]) * LD(p - xw);
            a += ld_f32(wr[k] + C) * LD(p);
            if (ow + 1 < W)
                a += ld_f32(wr[k] + 2 * C) * LD(p + xw);
        }
        st_f32(buf + ow * bs + c, a);
    }
    if (w0 == 0) { /* the left border column */
        v8 a = bv;
        for (int k = 0; k < n; ++k) {
            a += ld_f32(wr[k] + C) * LD(xr[k]);
            if (W > 1)
                a += ld_f32(wr[k] + 2 * C) * LD(xr[k] + xw);
        }
        st_f32(buf + c, a);
    }
}

/* ---- any other kernel (K_H x K_W, dilation): eight output pixels of a channel block per step ----
 *
 * The per-pixel loop (conv_pixel) reloads the weight vector for every multiply-add and recomputes
 * the tap addresses; at 16-32 channels (LGUN's large-kernel sequences, LAMNet's strip kernels) it
 * ran at a third of the 3 x 3 kernel's rate. Here each weight vector is loaded once for eight
 * neighbouring output pixels (eight accumulators in registers: 1.1 loads per multiply-add), over
 * the columns whose taps all fall inside the image; the border columns go pixel by pixel. */
#define TAP8(Q, XW, WV, A0, A1, A2, A3, A4, A5, A6, A7)                                                  \
    do {                                                                                                  \
        A0 += WV * LD(Q);                                                                                 \
        A1 += WV * LD((Q) + (XW));                                                                        \
        A2 += WV * LD((Q) + 2 * (XW));                                                                    \
        A3 += WV * LD((Q) + 3 * (XW));                                                                    \
        A4 += WV * LD((Q) + 4 * (XW));                                                                    \
        A5 += WV * LD((Q) + 5 * (XW));                                                                    \
        A6 += WV * LD((Q) + 6 * (XW));                                                                    \
        A7 += WV * LD((Q) + 7 * (XW));                                                                    \
    } while (0)

/* one output pixel, channels [c, c + 8), the taps inside the image (the last columns of a range;
 * border blocks of eight take the padded strips) */
static inline v8 FN(taps_pixel)(const T *xb, const float *w, v8 acc, const dw_geom *g, i64 oh, i64 ow, i64 c,
                                i64 i0, i64 i1)
{
    i64 j0, j1;
    tap_range(ow, g->PW, g->DW, g->KW, g->W, &j0, &j1);
    for (i64 i = i0; i < i1; ++i) {
        const T *xr = xb + (oh + i * g->DH - g->PH) * g->xh + (ow - g->PW) * g->xw + c;
        const float *wr = w + i * g->KW * g->C + c;
        for (i64 j = j0; j < j1; ++j)
            acc += ld_f32(wr + j * g->C) * LD(xr + j * g->DW * g->xw);
    }
    return acc;
}

/* Eight output pixels [ow, ow + 8) of channels [c, c + 8) whose taps reach past the image's left or
 * right edge: each kernel row's inputs are copied into a dense strip with zeros outside the image
 * (pad: 8 + (KW - 1) DW pixels of 8 channels), then the interior's register-blocked taps run on it.
 * At LAMNet's 1 x 23 kernel on 48-pixel training patches 22 of 48 columns are border columns; one
 * pixel at a time (two loads per multiply-add) they cost more than the interior. */
static inline void FN(taps8_padded)(const T *xb, const float *w, v8 bv, float *o, i64 bs, const dw_geom *g,
                                    i64 oh, i64 ow, i64 c, i64 i0, i64 i1, T *pad)
{
    const i64 C = g->C, KW = g->KW, span = 8 + (KW - 1) * g->DW;
    v8 a0 = bv, a1 = bv, a2 = bv, a3 = bv, a4 = bv, a5 = bv, a6 = bv, a7 = bv;
    for (i64 i = i0; i < i1; ++i) {
        const T *xr = xb + (oh + i * g->DH - g->PH) * g->xh + c;
        for (i64 k = 0, col = ow - g->PW; k < span; ++k, ++col) {
            if (col >= 0 && col < g->W)
                memcpy(pad + 8 * k, xr + col * g->xw, 8 * sizeof(T));
            else
                memset(pad + 8 * k, 0, 8 * sizeof(T));
        }
        const float *wr = w + i * KW * C + c;
        const T *q = pad;
        for (i64 j = 0; j < KW; ++j, q += 8 * g->DW) {
            const v8 wv = ld_f32(wr + j * C);
            TAP8(q, 8, wv, a0, a1, a2, a3, a4, a5, a6, a7);
        }
    }
    st_f32x8(o, bs, a0, a1, a2, a3, a4, a5, a6, a7);
}

#define PAD_PIXELS 512 /* the longest padded strip (8 + (KW - 1) DW pixels) on the stack; longer kernels go pixel by pixel */

/* output columns [w0, w1) of row oh, channels [c, c + 8), into buf (pixels bs floats apart): eight
 * pixels per step (from the image itself where every tap is inside it, else from a zero-padded
 * strip), the last columns of the range one at a time */
static void FN(row_taps_block)(const T *xb, const float *w, const float *bias, float *buf, i64 bs, const dw_geom *g,
                               i64 oh, i64 c, i64 w0, i64 w1)
{
    const i64 C = g->C, KW = g->KW, xw = g->xw, step = g->DW * xw;
    const v8 bv = bias ? ld_f32(bias + c) : (v8){0};
    i64 i0, i1;
    tap_range(oh, g->PH, g->DH, g->KH, g->H, &i0, &i1);
    /* the interior: every horizontal tap inside the image */
    const i64 lo = g->PW, hi = g->W - ((KW - 1) * g->DW - g->PW);
    const int paddable = 8 + (KW - 1) * g->DW <= PAD_PIXELS;
    T pad[8 * PAD_PIXELS];
    i64 ow = w0;
    for (; ow + 8 <= w1; ow += 8) {
        if (ow < lo || ow + 8 > hi) {
            if (!paddable)
                break;
            FN(taps8_padded)(xb, w, bv, buf + ow * bs + c, bs, g, oh, ow, c, i0, i1, pad);
            continue;
        }
        v8 a0 = bv, a1 = bv, a2 = bv, a3 = bv, a4 = bv, a5 = bv, a6 = bv, a7 = bv;
        for (i64 i = i0; i < i1; ++i) {
            const T *q = xb + (oh + i * g->DH - g->PH) * g->xh + (ow - g->PW) * xw + c;
            const float *wr = w + i * KW * C + c;
            for (i64 j = 0; j < KW; ++j, q += step) {
                const v8 wv = ld_f32(wr + j * C);
                TAP8(q, xw, wv, a0, a1, a2, a3, a4, a5, a6, a7);
            }
        }
        st_f32x8(buf + ow * bs + c, bs, a0, a1, a2, a3, a4, a5, a6, a7);
    }
    for (; ow < w1; ++ow)
        st_f32(buf + ow * bs + c, FN(taps_pixel)(xb, w, bv, g, oh, ow, c, i0, i1));
}

/* The input row that output row r + 1 reads and row r did not (its lowest kernel row), or NULL
 * (none, or past this part's rows): fetched from memory while row r computes, a slice per channel
 * block. On maps larger than the last-level cache the first channel block of every row otherwise
 * waits for each of its input lines in turn (measured 1.1-1.3x slower at 48-192 channels). */
static inline const T *FN(next_new_row)(const T *x, const dw_geom *g, i64 r, i64 r1)
{
    if (r + 1 >= r1)
        return NULL;
    const i64 b = (r + 1) / g->H, oh = (r + 1) % g->H;
    const i64 row = oh + (g->KH - 1) * g->DH - g->PH;
    return row >= 0 && row < g->H ? x + b * g->xb + row * g->xh : NULL;
}

/* the cache lines of pixels [p0, p1) of an input row, channels [0, C) */
static inline void FN(prefetch_pixels)(const T *row, const dw_geom *g, i64 p0, i64 p1)
{
    const i64 line = 64 / (i64)sizeof(T);
    for (i64 p = p0; p < p1; ++p) {
        const T *px = row + p * g->xw;
        for (i64 c = 0; c < g->C; c += line)
            __builtin_prefetch(px + c, 0, 3);
        __builtin_prefetch(px + g->C - 1, 0, 3);
    }
}

typedef void (*FN(block_fn))(const T *, const float *, const float *, float *, i64, const dw_geom *, i64, i64, i64, i64);

/* rows [r0, r1) by a row kernel (row_3x3_block or row_taps_block) over column chunks and channel
 * blocks, then the gate (C >= 8) */
static int FN(forward_rows)(FN(block_fn) block, const T *x, const float *w, const float *bias, T *y, T *d,
                            const dw_geom *g, i64 r0, i64 r1)
{
    const i64 C = g->C, H = g->H, W = g->W;
    /* float32: the convolution goes straight into y (no gate) or d (kept for the backward, the gate
     * read back from it); else into a row buffer (W x C floats) */
    const int into_y = sizeof(T) == sizeof(float) && g->gate == GATE_NONE && !d;
    const int into_d = sizeof(T) == sizeof(float) && d && !into_y;
    float *buf = (float *)malloc(sizeof(float) * (size_t)((into_y || into_d ? 0 : W * C) + 2 * C + 8));
    if (!buf)
        return 2;
    float *tmp = buf + (into_y || into_d ? 0 : W * C);
    for (i64 r = r0; r < r1; ++r) {
        const i64 b = r / H, oh = r % H;
        const T *xb = x + b * g->xb;
        float *dst = into_y ? (float *)(void *)(y + b * g->yb + oh * g->yh)
                   : into_d ? (float *)(void *)(d + b * g->db + oh * g->dh) : buf;
        const i64 bs = into_y ? g->yw : into_d ? g->dw : C;
        /* columns in chunks whose three input rows stay in the L1/L2 caches across the channel blocks
         * (a whole row of 192 channels does not: every block re-read it from memory) */
        const T *ahead = FN(next_new_row)(x, g, r, r1);
        for (i64 w0 = 0, w1; w0 < W; w0 = w1) { /* chunks end at PW + k DW_CHUNK: whole 8-pixel steps */
            w1 = (w0 == 0 ? g->PW : w0) + DW_CHUNK;
            w1 = w1 < W ? w1 : W;
            const i64 blocks = (C + 7) / 8;
            for (i64 k = 0, c0 = 0; c0 < C; c0 += 8, ++k) { /* the last block overlaps the previous one when C % 8 */
                if (ahead)
                    FN(prefetch_pixels)(ahead, g, w0 + (w1 - w0) * k / blocks, w0 + (w1 - w0) * (k + 1) / blocks);
                block(xb, w, bias, dst, bs, g, oh, c0 + 8 <= C ? c0 : C - 8, w0, w1);
            }
        }
        if (into_y)
            continue;
        for (i64 ow = 0; ow < W; ++ow) {
            const float *acc = dst + ow * bs;
            if (d && !into_d)
                FN(store_row)(d + b * g->db + oh * g->dh + ow * g->dw, acc, C);
            FN(epilogue)(acc, tmp, y + b * g->yb + oh * g->yh + ow * g->yw, C, g->gate);
        }
    }
    free(buf);
    return 0;
}

/* ---- column kernels (K_H x 1, no dilation, no gate): a dense column strip, R rows x P pixels ----
 *
 * Row by row, a K_H x 1 kernel reads K_H input rows for every output row; a whole image row apart (a
 * multiple of 4 KiB at LAMNet's 64 channels x 48 pixels), those rows fall in the same L1 cache sets
 * and the 23 x 1 kernel's loads came from L2. Here the input column of P = 2 pixels x 8 channels is
 * first copied, as float32, into a dense strip with zero rows for the padding (L1-resident), and R = 4
 * output rows of both pixels are accumulated together while the strip's rows stream through: every
 * input vector feeds R accumulators, every weight vector P (weights zero-extended by R - 1 taps on
 * both sides, so no tap tests). */
#define COL_R 4

/* output rows o .. o + R - 1 (strip rows from s0) of P pixels into y; wz: the zero-extended taps */
static inline __attribute__((always_inline)) void FN(column_block)(const float *strip, const float *wz, v8 bv,
                                                                   T *yo, const dw_geom *g, i64 KH,
                                                                   const int R, const int P)
{
    v8 a[COL_R][2];
    for (int rr = 0; rr < R; ++rr)
        for (int pp = 0; pp < P; ++pp)
            a[rr][pp] = bv;
    /* strip row m feeds output row rr through tap m - rr, at wz[(COL_R - 1) + m - rr] */
    for (i64 m = 0; m < R + KH - 1; ++m) {
        v8 xv[2];
        for (int pp = 0; pp < P; ++pp)
            xv[pp] = ld_f32(strip + m * 16 + pp * 8);
        for (int rr = 0; rr < R; ++rr) {
            const v8 wv = ld_f32(wz + (COL_R - 1 + m - rr) * 8);
            for (int pp = 0; pp < P; ++pp)
                a[rr][pp] += wv * xv[pp];
        }
    }
    for (int rr = 0; rr < R; ++rr)
        for (int pp = 0; pp < P; ++pp)
            ST(yo + rr * g->yh + pp * g->yw, a[rr][pp]);
}

/* output rows [o0, o1) of one image, pixels [ow, ow + P), channels [c, c + 8) */
static inline __attribute__((always_inline)) void FN(column_run)(const T *xb, const float *wz, v8 bv, T *yb,
                                                                 const dw_geom *g, i64 o0, i64 o1, i64 ow, i64 c,
                                                                 float *strip, const int P)
{
    const i64 KH = g->KH, k0 = o0 - g->PH, k1 = o1 - 1 + KH - g->PH; /* input rows [k0, k1) */
    for (i64 k = k0; k < k1; ++k)
        for (int pp = 0; pp < P; ++pp)
            st_f32(strip + (k - k0) * 16 + pp * 8,
                   k >= 0 && k < g->H ? LD(xb + k * g->xh + (ow + pp) * g->xw + c) : (v8){0});
    T *yo = yb + ow * g->yw + c;
    i64 o = o0;
    for (; o + COL_R <= o1; o += COL_R)
        FN(column_block)(strip + (o - o0) * 16, wz, bv, yo + o * g->yh, g, KH, COL_R, P);
    for (; o < o1; ++o)
        FN(column_block)(strip + (o - o0) * 16, wz, bv, yo + o * g->yh, g, KH, 1, P);
}

static int FN(forward_columns)(const T *x, const float *w, const float *bias, T *y, const dw_geom *g, i64 r0, i64 r1)
{
    const i64 H = g->H, W = g->W, C = g->C, KH = g->KH;
    float *strip = (float *)malloc(sizeof(float) * (size_t)((H + KH) * 16 + (KH + 2 * COL_R) * 8));
    if (!strip)
        return 2;
    float *wz = strip + (H + KH) * 16;
    for (i64 r = r0; r < r1;) {
        const i64 b = r / H, o0 = r % H;
        const i64 o1 = r1 - b * H < H ? r1 - b * H : H; /* this image's rows [o0, o1) */
        for (i64 cb = 0; cb < C; cb += 8) {
            const i64 c = cb + 8 <= C ? cb : C - 8; /* the last block overlaps the previous one when C % 8 */
            const v8 bv = bias ? ld_f32(bias + c) : (v8){0};
            for (i64 t = 0; t < KH + 2 * (COL_R - 1); ++t) {
                const i64 i = t - (COL_R - 1);
                st_f32(wz + t * 8, i >= 0 && i < KH ? ld_f32(w + i * C + c) : (v8){0});
            }
            i64 ow = 0;
            for (; ow + 2 <= W; ow += 2)
                FN(column_run)(x + b * g->xb, wz, bv, y + b * g->yb, g, o0, o1, ow, c, strip, 2);
            if (ow < W)
                FN(column_run)(x + b * g->xb, wz, bv, y + b * g->yb, g, o0, o1, ow, c, strip, 1);
        }
        r = b * H + o1;
    }
    free(strip);
    return 0;
}

/* y (and d, the convolution before the gate, when not NULL) for output rows [r0, r1) of B * H */
int FN(lightsr_dw_forward)(const T *x, const float *w, const float *bias, T *y, T *d, const dw_geom *g,
                           i64 r0, i64 r1)
{
    const i64 C = g->C, H = g->H, W = g->W;
    if (g->KH == 3 && g->KW == 3 && g->DH == 1 && g->DW == 1 && g->PH == 1 && g->PW == 1 && C >= 8)
        return FN(forward_rows)(FN(row_3x3_block), x, w, bias, y, d, g, r0, r1);
    if (C >= 8 && g->KW == 1 && g->KH >= 5 && g->DH == 1 && g->gate == GATE_NONE && !d)
        return FN(forward_columns)(x, w, bias, y, g, r0, r1);
    if (C >= 8)
        return FN(forward_rows)(FN(row_taps_block), x, w, bias, y, d, g, r0, r1);
    float *acc = (float *)malloc(sizeof(float) * (size_t)(3 * C + 8));
    if (!acc)
        return 2;
    float *tmp = acc + C;
    for (i64 r = r0; r < r1; ++r) {
        const i64 b = r / H, oh = r % H;
        i64 i0, i1;
        tap_range(oh, g->PH, g->DH, g->KH, H, &i0, &i1);
        const T *xb = x + b * g->xb;
        for (i64 ow = 0; ow < W; ++ow) {
            i64 j0, j1;
            tap_range(ow, g->PW, g->DW, g->KW, W, &j0, &j1);
            FN(conv_pixel)(xb, w, bias, acc, g, oh, ow, i0, i1, j0, j1);
            if (d)
                FN(store_row)(d + b * g->db + oh * g->dh + ow * g->dw, acc, C);
            FN(epilogue)(acc, tmp, y + b * g->yb + oh * g->yh + ow * g->yw, C, g->gate);
        }
    }
    free(acc);
    return 0;
}

/* gd = d(gate)/d(d) applied to gy, for rows [r0, r1): gy has the strides y, d and gd those of d.
 * With g = GELU(d1): GATE_GELU (y = g d2) gd1 = gy d2 g', gd2 = gy g; GATE_DUAL (y = [g d1, g d2])
 * gd1 = gy1 (g + d1 g') + gy2 d2 g', gd2 = gy2 g. Eight channels at a time straight from memory. */
/* the gate's backward at channel c (of the first half) for a vector (VT v8: LOAD / STORE vectors,
 * GRAD gelu_grad8) or one value (VT float: scalars, gelu_grad1) */
#define GATE_GRAD(VT, LOAD, STORE, GRAD)                                                                      \
    do {                                                                                                      \
        const VT x1 = LOAD(dp + c), x2 = LOAD(dp + m + c), g1 = LOAD(gp + c);                                 \
        VT ge;                                                                                                \
        const VT dge = GRAD(x1, &ge);                                                                         \
        const VT g2 = dual ? LOAD(gp + m + c) : g1;                                                           \
        STORE(op + c, dual ? g1 * (ge + x1 * dge) + g2 * x2 * dge : g1 * x2 * dge);                           \
        STORE(op + m + c, g2 * ge);                                                                           \
    } while (0)

int FN(lightsr_dw_gate_backward)(const T *gy, const T *d, T *gd, const dw_geom *g, i64 r0, i64 r1)
{
    const i64 C = g->C, m = C / 2, H = g->H, W = g->W;
    const int dual = g->gate != GATE_GELU;
    for (i64 r = r0; r < r1; ++r) {
        const i64 b = r / H, oh = r % H;
        for (i64 ow = 0; ow < W; ++ow) {
            const i64 off = b * g->db + oh * g->dh + ow * g->dw;
            const T *dp = d + off, *gp = gy + b * g->yb + oh * g->yh + ow * g->yw;
            T *op = gd + off;
            i64 c = 0;
            for (; c + 8 <= m; c += 8)
                GATE_GRAD(v8, LD, ST, gelu_grad8);
            for (; c < m; ++c)
                GATE_GRAD(float, LDS, STS, gelu_grad1);
        }
    }
    return 0;
}

/* gw[tap][c] += gy[pixel][c] * x[pixel + tap offset][c] for one pixel, every valid tap, all channels */
static inline void FN(wgrad_pixel)(const T *xb, const T *gp, float *gw, const dw_geom *g, i64 oh, i64 ow,
                                   i64 i0, i64 i1)
{
    const i64 C = g->C, KW = g->KW;
    i64 j0, j1;
    tap_range(ow, g->PW, g->DW, KW, g->W, &j0, &j1);
    for (i64 i = i0; i < i1; ++i) {
        const T *xr = xb + (oh + i * g->DH - g->PH) * g->xh;
        for (i64 j = j0; j < j1; ++j) {
            const T *xp = xr + (ow + j * g->DW - g->PW) * g->xw;
            float *wp = gw + (i * KW + j) * C;
            i64 c = 0;
            for (; c + 8 <= C; c += 8)
                st_f32(wp + c, ld_f32(wp + c) + LD(gp + c) * LD(xp + c));
            for (; c < C; ++c)
                wp[c] += LDS(gp + c) * LDS(xp + c);
        }
    }
}

/* gb[c] += gy[pixel][c] over one row's W pixels */
static inline void FN(bias_grad_row)(const T *gyr, float *gb, const dw_geom *g)
{
    const i64 C = g->C;
    for (i64 ow = 0; ow < g->W; ++ow) {
        const T *gp = gyr + ow * g->yw;
        i64 c = 0;
        for (; c + 8 <= C; c += 8)
            st_f32(gb + c, ld_f32(gb + c) + LD(gp + c));
        for (; c < C; ++c)
            gb[c] += LDS(gp + c);
    }
}

/* One run of NJ consecutive taps of a kernel row (NJ accumulators in registers, so no multiply-add
 * waits for the previous one) over n output columns of one row, channels [cb, cb + 8): the k-th
 * column's output gradient at gy0 + k * yw, tap jj's input at x0 + k * sx + jj * step, its gradient
 * at wp + jj * C (lanes below
 * `keep_from` skipped: the overlapping last channel vector). */
#define WGRAD_RUN(NJ)                                                                                           \
    static inline void FN(wgrad_run_##NJ)(const T *gy0, i64 yw, const T *x0, i64 sx, i64 step, float *wp,      \
                                           i64 C, i64 n, int keep_from)                                         \
    {                                                                                                            \
        v8 acc[NJ];                                                                                              \
        for (int jj = 0; jj < NJ; ++jj)                                                                          \
            acc[jj] = (v8){0};                                                                                   \
        for (i64 ow = 0; ow < n; ++ow) {                                                                         \
            const v8 gvec = LD(gy0 + ow * yw);                                                                   \
            const T *xs = x0 + ow * sx;                                                                          \
            for (int jj = 0; jj < NJ; ++jj)                                                                      \
                acc[jj] += gvec * LD(xs + jj * step);                                                            \
        }                                                                                                        \
        const v8 keep = (v8)((i32x8){0, 1, 2, 3, 4, 5, 6, 7} >= (i32x8){0} + keep_from);                          \
        for (int jj = 0; jj < NJ; ++jj)                                                                          \
            st_f32(wp + jj * C, ld_f32(wp + jj * C) + (v8)((i32x8)acc[jj] & (i32x8)keep));                       \
    }
WGRAD_RUN(1)
WGRAD_RUN(2)
WGRAD_RUN(3)
WGRAD_RUN(4)
WGRAD_RUN(5)
WGRAD_RUN(6)
WGRAD_RUN(7)
WGRAD_RUN(8)
WGRAD_RUN(9)
WGRAD_RUN(10)
WGRAD_RUN(11)
WGRAD_RUN(12)
#undef WGRAD_RUN
#define WGRAD_MAX_RUN 12 /* accumulators of one run: 12 + the gradient vector fit in 16 AVX registers */

/* Wide kernels ((KW - 1) DW >= WGRAD_PAD_REACH): each input row of a channel block is copied into a
 * zero-padded strip, so that every column runs in the register-blocked runs (LAMNet's 1 x 23 on a
 * 48-pixel patch: 22 of 48 columns would otherwise take the per-pixel path, a load, a multiply-add and
 * a store of the gradient per tap). Narrow kernels keep their few border columns per pixel. */
#define WGRAD_PAD_REACH 4

/* The kernel-gradient runs of output row oh, columns [w0, w1) (all taps of these columns inside the
 * image, or inside the padded strip when pad is not NULL: W + (KW - 1) DW pixels x 8 channels),
 * channel block by channel block, kernel row by kernel row; a row's KW taps in runs of balanced
 * length (1 x 23: 12 + 11; not 8 + 8 + 7). */
static void FN(wgrad_runs)(const T *gyr, const T *xb, float *gw, const dw_geom *g, i64 oh, i64 i0, i64 i1,
                           i64 w0, i64 w1, T *pad)
{
    const i64 C = g->C, KW = g->KW, Wp = g->W + (KW - 1) * g->DW;
    const i64 nruns = (KW + WGRAD_MAX_RUN - 1) / WGRAD_MAX_RUN;
    for (i64 cb = 0; cb < C; cb += 8) {
        int keep_from = 0;
        i64 c = cb;
        if (cb + 8 > C) { /* the last channels as a vector overlapping the previous block */
            c = C - 8;
            keep_from = (int)(cb - c);
        }
        const T *gy0 = gyr + w0 * g->yw + c;
        for (i64 i = i0; i < i1; ++i) {
            const T *xr = xb + (oh + i * g->DH - g->PH) * g->xh + c;
            const T *x0 = xr + (w0 - g->PW) * g->xw; /* column w0, tap 0 (inside the row: w0 >= PW) */
            i64 sx = g->xw;
            if (pad) {
                for (i64 k = 0, col = -g->PW; k < Wp; ++k, ++col) {
                    if (col >= 0 && col < g->W)
                        memcpy(pad + 8 * k, xr + col * g->xw, 8 * sizeof(T));
                    else
                        memset(pad + 8 * k, 0, 8 * sizeof(T));
                }
                x0 = pad + 8 * w0, sx = 8;
            }
            const i64 step = g->DW * sx;
            for (i64 run = 0, j0 = 0; run < nruns; ++run) {
                const i64 nj = (KW * (run + 1)) / nruns - j0;
                const T *xj = x0 + j0 * step;
                float *wp = gw + (i * KW + j0) * C + c;
                switch (nj) {
                case 1: FN(wgrad_run_1)(gy0, g->yw, xj, sx, step, wp, C, w1 - w0, keep_from); break;
                case 2: FN(wgrad_run_2)(gy0, g->yw, xj, sx, step, wp, C, w1 - w0, keep_from); break;
                case 3: FN(wgrad_run_3)(gy0, g->yw, xj, sx, step, wp, C, w1 - w0, keep_from); break;
                case 4: FN(wgrad_run_4)(gy0, g->yw, xj, sx, step, wp, C, w1 - w0, keep_from); break;
                case 5: FN(wgrad_run_5)(gy0, g->yw, xj, sx, step, wp, C, w1 - w0, keep_from); break;
                case 6: FN(wgrad_run_6)(gy0, g->yw, xj, sx, step, wp, C, w1 - w0, keep_from); break;
                case 7: FN(wgrad_run_7)(gy0, g->yw, xj, sx, step, wp, C, w1 - w0, keep_from); break;
                case 8: FN(wgrad_run_8)(gy0, g->yw, xj, sx, step, wp, C, w1 - w0, keep_from); break;
                case 9: FN(wgrad_run_9)(gy0, g->yw, xj, sx, step, wp, C, w1 - w0, keep_from); break;
                case 10: FN(wgrad_run_10)(gy0, g->yw, xj, sx, step, wp, C, w1 - w0, keep_from); break;
                case 11: FN(wgrad_run_11)(gy0, g->yw, xj, sx, step, wp, C, w1 - w0, keep_from); break;
                default: FN(wgrad_run_12)(gy0, g->yw, xj, sx, step, wp, C, w1 - w0, keep_from); break;
                }
                j0 += nj;
            }
        }
    }
}

/* The kernel gradient of a column kernel (K_H x 1, no dilation): per column of P pixels x 8 channels,
 * the input (zero rows for the padding) and the output gradient are copied into dense float32 strips,
 * then eight taps at a time accumulate down the column (the row-by-row runs read eight input rows a
 * whole image row apart: the L1 set conflicts of the forward). A last group of fewer than 8 taps
 * computes 8 and keeps its own (the strip has zero rows to spare). */
static int FN(wgrad_columns)(const T *gy, const T *x, float *gw, float *gb, const dw_geom *g, i64 r0, i64 r1)
{
    const i64 H = g->H, W = g->W, C = g->C, KH = g->KH, groups = (KH + 7) / 8;
    const i64 rows_x = H + 8 * groups; /* strip rows read: up to (rows - 1) + 8 groups - 1 */
    float *xs = (float *)malloc(sizeof(float) * (size_t)((rows_x + H) * 16));
    if (!xs)
        return 2;
    float *gs = xs + rows_x * 16;
    for (i64 r = r0; r < r1;) {
        const i64 b = r / H, o0 = r % H;
        const i64 o1 = r1 - b * H < H ? r1 - b * H : H, n = o1 - o0; /* this image's rows [o0, o1) */
        const T *xb = x + b * g->xb, *gyb = gy + b * g->yb;
        if (gb)
            for (i64 o = o0; o < o1; ++o)
                FN(bias_grad_row)(gyb + o * g->yh, gb, g);
        for (i64 cb = 0; cb < C; cb += 8) {
            const i64 c = cb + 8 <= C ? cb : C - 8; /* the last block overlaps the previous one when C % 8 */
            const v8 keep = (v8)((i32x8){0, 1, 2, 3, 4, 5, 6, 7} >= (i32x8){0} + (int)(cb - c));
            for (i64 ow = 0; ow < W; ow += 2) {
                const int P = ow + 2 <= W ? 2 : 1;
                for (i64 k = 0; k < n + 8 * groups; ++k) { /* strip row k: input row o0 - PH + k */
                    const i64 row = o0 - g->PH + k;
                    for (int pp = 0; pp < P; ++pp)
                        st_f32(xs + k * 16 + pp * 8, k < n + KH - 1 && row >= 0 && row < H
                                                         ? LD(xb + row * g->xh + (ow + pp) * g->xw + c) : (v8){0});
                }
                for (i64 k = 0; k < n; ++k)
                    for (int pp = 0; pp < P; ++pp)
                        st_f32(gs + k * 16 + pp * 8, LD(gyb + (o0 + k) * g->yh + (ow + pp) * g->yw + c));
                for (i64 t0 = 0; t0 < KH; t0 += 8) {
                    v8 acc[8];
                    for (int jj = 0; jj < 8; ++jj)
                        acc[jj] = (v8){0};
                    for (i64 k = 0; k < n; ++k)
                        for (int pp = 0; pp < P; ++pp) {
                            const v8 gv = ld_f32(gs + k * 16 + pp * 8);
                            const float *xk = xs + (k + t0) * 16 + pp * 8;
                            for (int jj = 0; jj < 8; ++jj)
                                acc[jj] += gv * ld_f32(xk + jj * 16);
                        }
                    for (int jj = 0; jj < 8 && t0 + jj < KH; ++jj) {
                        float *wp = gw + (t0 + jj) * C + c;
                        st_f32(wp, ld_f32(wp) + (v8)((i32x8)acc[jj] & (i32x8)keep));
                    }
                }
            }
        }
        r = b * H + o1;
    }
    free(xs);
    return 0;
}

/* gw[tap][c] += sum over the rows' pixels of gy[pixel][c] * x[pixel + tap offset][c] and
 * gb[c] += gy[pixel][c] (gb may be NULL); gy has the strides y of the geometry. Register-blocked
 * runs over the columns whose taps all fall inside the image (all columns for wide kernels, on
 * zero-padded strips), the other columns pixel by pixel. Returns 2 if the strips cannot be allocated. */
int FN(lightsr_dw_weight_grad)(const T *gy, const T *x, float *gw, float *gb, const dw_geom *g, i64 r0, i64 r1)
{
    const i64 C = g->C, H = g->H, W = g->W, reach = (g->KW - 1) * g->DW;
    if (C >= 8 && g->KW == 1 && g->KH >= 5 && g->DH == 1)
        return FN(wgrad_columns)(gy, x, gw, gb, g, r0, r1);
    T *pad = NULL;
    if (C >= 8 && reach >= WGRAD_PAD_REACH) {
        pad = (T *)malloc(sizeof(T) * (size_t)((W + reach) * 8));
        if (!pad)
            return 2;
    }
    /* interior columns: ow - PW >= 0 and ow + (KW - 1) DW - PW < W */
    i64 w0 = g->PW, w1 = W - (reach - g->PW);
    if (pad)
        w0 = 0, w1 = W;
    else if (C < 8 || w0 >= w1)
        w0 = w1 = W; /* no interior run: every pixel on the per-pixel path */
    for (i64 r = r0; r < r1; ++r) {
        const i64 b = r / H, oh = r % H;
        i64 i0, i1;
        tap_range(oh, g->PH, g->DH, g->KH, H, &i0, &i1);
        const T *xb = x + b * g->xb;
        const T *gyr = gy + b * g->yb + oh * g->yh;
        if (gb)
            FN(bias_grad_row)(gyr, gb, g);
        for (i64 ow = 0; ow < W; ++ow)
            if (ow < w0 || ow >= w1)
                FN(wgrad_pixel)(xb, gyr + ow * g->yw, gw, g, oh, ow, i0, i1);
        if (w0 < w1 && i0 < i1)
            FN(wgrad_runs)(gyr, xb, gw, g, oh, i0, i1, w0, w1, pad);
    }
    free(pad);
    return 0;
}

/* y[b, h, w, c] = gelu(d[b, h, w, c] * s[b, c]): a squeeze-and-excitation gate's per-channel scale and
 * the GELU after it in one pass (LGUN's SAL; inference). d has the strides x of the geometry, y the
 * strides y; s is (B, C) float32. Rows [r0, r1) of the B * H rows. */
int FN(lightsr_scale_gelu)(const T *d, const float *s, T *y, const dw_geom *g, i64 r0, i64 r1)
{
    const i64 C = g->C, H = g->H, W = g->W, C8 = C - C % 8;
    for (i64 r = r0; r < r1; ++r) {
        const i64 b = r / H, h = r % H;
        const float *sb = s + b * C;
        for (i64 w = 0; w < W; ++w) { /* one pass in registers: load, scale, GELU, store */
            const T *dp = d + b * g->xb + h * g->xh + w * g->xw;
            T *yp = y + b * g->yb + h * g->yh + w * g->yw;
            for (i64 c = 0; c < C8; c += 8)
                ST(yp + c, gelu8(LD(dp + c) * ld_f32(sb + c)));
            for (i64 c = C8; c < C; ++c)
                STS(yp + c, gelu1(LDS(dp + c) * sb[c]));
        }
    }
    return 0;
}

/* The backward of lightsr_scale_gelu (training): with t = d s and GELU' by gelu_grad8,
 * gd = gy GELU'(t) s, and per row r of the B * H rows gs[r][c] = sum over the row's pixels of
 * gy GELU'(t) d (the caller adds an image's rows: the result does not depend on the thread count).
 * gy has the strides y of the geometry, d the strides x, gd the strides d; s is (B, C) float32. */
int FN(lightsr_scale_gelu_backward)(const T *gy, const T *d, const float *s, T *gd, float *gs, const dw_geom *g,
                                    i64 r0, i64 r1)
{
    const i64 C = g->C, H = g->H, W = g->W;
    for (i64 r = r0; r < r1; ++r) {
        const i64 b = r / H, h = r % H;
        const float *sb = s + b * C;
        float *gsr = gs + r * C;
        memset(gsr, 0, sizeof(float) * (size_t)C);
        for (i64 w = 0; w < W; ++w) {
            const T *dp = d + b * g->xb + h * g->xh + w * g->xw, *gp = gy + b * g->yb + h * g->yh + w * g->yw;
            T *op = gd + b * g->db + h * g->dh + w * g->dw;
            i64 c = 0;
            for (; c + 8 <= C; c += 8) {
                const v8 dv = LD(dp + c), sv = ld_f32(sb + c);
                v8 ge;
                const v8 gt = LD(gp + c) * gelu_grad8(dv * sv, &ge);
                ST(op + c, gt * sv);
                st_f32(gsr + c, ld_f32(gsr + c) + gt * dv);
            }
            for (; c < C; ++c) {
                const float dv = LDS(dp + c);
                float ge;
                const float gt = LDS(gp + c) * gelu_grad1(dv * sb[c], &ge);
                STS(op + c, gt * sb[c]);
                gsr[c] += gt * dv;
            }
        }
    }
    return 0;
}

#undef GATE_LOOP
#undef GATE_GRAD
#undef TAP8
#undef PAD_PIXELS
#undef COL_R
#undef WGRAD_PAD_REACH
#undef WGRAD_MAX_RUN
#undef ROW4
#undef ROW8
#undef IN
#undef TAPS_PROLOGUE
#undef FN
#undef CAT
#undef CAT_
