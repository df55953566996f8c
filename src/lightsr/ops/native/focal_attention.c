/* Focal separable attention (FSA), float32 forward and backward on CPU, one pass per line; a
 * bfloat16-storage forward (lightsr_fsa_forward_bf16) for inference under autocast.
 *
 * The Python op (lightsr/ops/focal_attention.py) documents the semantics; this file computes the
 * same numbers (up to float32 rounding) without tensor-sized temporaries. FSA is a 1-D dynamic
 * filter, so the tensor is seen as "lines" along the filtered axis (rows for the horizontal FSA,
 * columns for the vertical one), each of L pixels; every pixel holds C channels at unit stride
 * (channels-last, or a channel slice of it). Tap t of kernel group g at pixel i averages the
 * n[t] samples starting at offset lo[t] (zeros outside the line, counted in the mean):
 *
 *   M_n[q]       = 1/n * sum_{m < n} x[q + m]                          (box mean, zero padded)
 *   forward      out[i, c]        = sum_t k[i, g*K + t] * M_{n[t]}[i + lo[t], c]       (c in group g)
 *   grad kernel  gk[i, g*K + t]   = sum_{c in g} gout[i, c] * M_{n[t]}[i + lo[t], c]
 *   grad mean    gM_n[i + lo[t], c] += k[i, g*K + t] * gout[i, c]
 *   grad x       gx[q, c]         = sum_n 1/n * sum_{m < n} gM_n[q - m, c]   (adjoint of the box mean)
 *
 * Fast path (channels per group a multiple of 8, LAMNet's 32 channels in 4 groups): per line, the
 * box means of every distinct tap length are built once into small dense buffers (a line of
 * 48-320 pixels: L2-resident), so each tap is one vector load and one multiply-add per 8
 * channels, with no edge tests; the backward accumulates gM in buffers of the same shape and
 * applies the box-mean adjoint once per line, and reduces the kernel gradient's dot products
 * eight taps at a time into a dense line buffer. While a line computes, the next line's pixels
 * are prefetched (a line is read in a burst, then computed: 1.1-1.7x, benchmarks/native_ab.py).
 * Dense buffers also keep the vertical FSA's column walk (pixels a whole image row apart in
 * memory) out of the cache-set conflicts it would hit.
 * Other group widths use a plain per-tap loop. With act = 1 the kernel coefficients are logits
 * and tanh is applied on the fly (LAMNet's kernel predictors end in tanh): per line, the
 * coefficients are copied into a buffer and passed through an 8-wide rational approximation of
 * tanh (tanh_rational below: max abs error 3.3e-7, faster than libmvec's vector tanhf on this
 * EPYC, and vectorised with any libc); the backward returns the gradient of the logits, gk * (1 - tanh^2). Lines are independent, so callers may split
 * [line0, line1) across threads. Vector code uses GCC / clang vector extensions (AVX with
 * -mavx2 -mfma where the CPU has it, SSE otherwise).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h" /* i64, v8, v8u, i32x8; bfloat16 loads and stores */

int lightsr_fsa_vector_tanh(void)
{
    return 1; /* tanh is applied by vector code (tanh_rational), whatever the libc */
}


#define MAX_TAPS 256
#define MAX_GROUP 512   /* channels per kernel group, generic path */
#define MAX_VECTORS 512 /* 8-channel vectors per pixel (4096 channels), fast path */


/* tanh(x) = x P(x^2) / Q(x^2) on [-9, 9] (clamped outside, where tanh is 1 to float32 precision): a
 * (5, 5) rational least-squares fit of tanh on [0, 9] (float64, iteratively reweighted towards the
 * largest errors), max abs error 3.3e-7 in float32 evaluation over [-12, 12]; NaN stays NaN. */
static inline v8 tanh_rational(v8 x)
{
    const v8 c = (v8){0} + 9.0f;
    const i32x8 hi = x > c, lo = x < -c;
    const v8 a = (v8)(((i32x8)x & ~(hi | lo)) | ((i32x8)c & hi) | ((i32x8)(-c) & lo));
    const v8 z = a * a;
    const v8 p = (((1.2725911324729111e-08f * z + 2.011788984101993e-05f) * z + 0.003464131673708028f) * z
                  + 0.13354021074883654f) * z + 0.9999999367817037f;
    const v8 q = (((7.508155760137247e-07f * z + 0.00032353154377660345f) * z + 0.025755685759497413f) * z
                  + 0.46687316222436975f) * z + 1.0f;
    return a * p / q;
}

static inline float hsum8(v8 v)
{
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
/* The eight sums of d[0..7] in elements 0-7: three rounds of two shuffles and an add (21 vector
 * ops for eight sums, against 12 for four in hsum8x4 and one scalar store each). */
static inline v8 hsum8x8(const v8 *d)
{
    v8 a[4], b[2];
    for (int p = 0; p < 4; ++p)
        a[p] = __builtin_shufflevector(d[2 * p], d[2 * p + 1], 0, 1, 2, 3, 8, 9, 10, 11)
               + __builtin_shufflevector(d[2 * p], d[2 * p + 1], 4, 5, 6, 7, 12, 13, 14, 15);
    for (int p = 0; p < 2; ++p)
        b[p] = __builtin_shufflevector(a[2 * p], a[2 * p + 1], 0, 1, 4, 5, 8, 9, 12, 13)
               + __builtin_shufflevector(a[2 * p], a[2 * p + 1], 2, 3, 6, 7, 10, 11, 14, 15);
    return __builtin_shufflevector(b[0], b[1], 0, 2, 4, 6, 8, 10, 12, 14)
           + __builtin_shufflevector(b[0], b[1], 1, 3, 5, 7, 9, 11, 13, 15);
}
#else
static inline v8 hsum8x8(const v8 *d) /* GCC < 12: no __builtin_shufflevector */
{
    v8 r;
    for (int u = 0; u < 8; ++u)
        r[u] = hsum8(d[u]);
    return r;
}
#endif

/* ---- geometry shared by both paths ------------------------------------------------------- */

typedef struct {
    i64 J, L, C, G, K, P;      /* lines per image, pixels per line, channels, groups, taps, channels per group */
    const i64 *lo, *n;         /* taps: first offset (relative to the pixel), length */
    i64 dmin, dmax;            /* smallest / largest offset any tap reaches */
    float inv[MAX_TAPS];       /* 1 / n[t] */
    i64 slot[MAX_TAPS];        /* index of tap t's length among the distinct lengths */
    i64 lens[MAX_TAPS + 1];    /* the distinct lengths, ascending; lens[0] = 1 (the padded line itself) */
    i64 parent[MAX_TAPS + 1];  /* slot of length lens[s] / 2 (means built by doubling), or -1: summed */
    i64 nslots;
    i64 Lq;                    /* buffer positions per line: q - dmin in [0, Lq), zeros outside the line */
    i64 off[MAX_TAPS];         /* tap t's mean for pixel i: M + off[t] + i * C (fast path buffers) */
    i64 act;                   /* 1: coefficients are logits, tanh applied */
    float *T;                  /* act: L x G*K scratch for one line's activated coefficients */
    const struct Ahead *ahead; /* forward: the line to prefetch, when the caller computes from line buffers */
} Geo;

/* A line to prefetch pixel by pixel while another computes: x, the kernel and the output (written),
 * byte strides between pixels and bytes per pixel. */
typedef struct Ahead {
    const char *x, *k;
    char *o;
    i64 xi, ki, oi, xn, kn, on;
} Ahead;

static i64 slot_of(const Geo *g, i64 len)
{
    for (i64 s = 0; s < g->nslots; ++s)
        if (g->lens[s] == len)
            return s;
    return -1;
}

static int setup(Geo *g, i64 J, i64 L, i64 C, i64 G, i64 K, const i64 *lo, const i64 *n, i64 dmin, i64 dmax)
{
    if (K > MAX_TAPS || G <= 0 || C % G)
        return 1;
    g->J = J, g->L = L, g->C = C, g->G = G, g->K = K, g->P = C / G, g->ahead = NULL;
    /* the window always holds the pixel itself: the padded line starts at or before it */
    g->lo = lo, g->n = n, g->dmin = dmin < 0 ? dmin : 0, g->dmax = dmax > 0 ? dmax : 0;
    g->nslots = 1, g->lens[0] = 1;
    i64 maxlen = 1;
    for (i64 t = 0; t < K; ++t) {
        if (n[t] < 1)
            return 1;
        g->inv[t] = 1.0f / (float)n[t];
        if (slot_of(g, n[t]) < 0) { /* insert, keeping the lengths ascending */
            i64 s = g->nslots++;
            for (; s > 0 && g->lens[s - 1] > n[t]; --s)
                g->lens[s] = g->lens[s - 1];
            g->lens[s] = n[t];
        }
        maxlen = n[t] > maxlen ? n[t] : maxlen;
    }
    for (i64 s = 0; s < g->nslots; ++s)
        g->parent[s] = s && g->lens[s] % 2 == 0 ? slot_of(g, g->lens[s] / 2) : -1;
    /* the means of pixel starts [dmin, L - 1 + dmax] plus room for the doubling's second halves */
    g->Lq = L + g->dmax - g->dmin + maxlen - 1;
    for (i64 t = 0; t < K; ++t) {
        g->slot[t] = slot_of(g, n[t]);
        g->off[t] = g->slot[t] * g->Lq * C + (lo[t] - g->dmin) * C;
    }
    return 0;
}

static void tanh_in_place(float *T, i64 n)
{
    i64 e = 0;
    for (; e + 8 <= n; e += 8)
        *(v8u *)(T + e) = tanh_rational(*(const v8u *)(T + e));
    if (e < n) { /* the last values through one padded vector */
        v8 tail = {0};
        for (i64 r = e; r < n; ++r)
            tail[r - e] = T[r];
        tail = tanh_rational(tail);
        for (i64 r = e; r < n; ++r)
            T[r] = tail[r - e];
    }
}

/* The line's G*K coefficients per pixel, tanh applied, densely in T (returned with stride G*K);
 * without an activation the kernel line itself. */
static const float *coefficients(const Geo *g, i64 act, const float *kl, i64 *ki, float *T)
{
    if (!act)
        return kl;
    const i64 GK = g->G * g->K, L = g->L;
    for (i64 i = 0; i < L; ++i) { /* vector copies (a memcpy call per pixel's 52 values cost more) */
        const float *src = kl + i * *ki;
        float *dst = T + i * GK;
        i64 e = 0;
        for (; e + 8 <= GK; e += 8)
            *(v8u *)(dst + e) = *(const v8u *)(src + e);
        for (; e < GK; ++e)
            dst[e] = src[e];
    }
    tanh_in_place(T, L * GK);
    *ki = GK;
    return T;
}

/* gk of the logits: gk * (1 - tanh^2), for the pixel's G*K values */
static inline void tanh_backward(float *restrict bp, const float *restrict tp, i64 GK)
{
    for (i64 e = 0; e < GK; ++e)
        bp[e] *= 1.0f - tp[e] * tp[e];
}

/* ---- fast path: box-mean line buffers, 8-channel vectors ------------------------------------- */

/* Box means of one line: M[s][(q - dmin) * C + c] = mean of lens[s] pixels starting at q (zeros
 * outside the line), for q - dmin in [0, Lq - lens[s]]. Slot 0 is the line itself, zero padded; a
 * length with its half among the lengths (LAMNet: 1, 2, 4) is the mean of two half-length means,
 * others a sum of slot 0: no edge tests, every loop a flat run of C-channel rows. */
static void build_means(const Geo *g, const float *xl, i64 xi, float *M)
{
    const i64 C = g->C, L = g->L, Lq = g->Lq, lead = -g->dmin;
    memset(M, 0, sizeof(float) * (size_t)(lead * C));
    for (i64 q = 0; q < L; ++q)
        for (i64 c = 0; c < C; c += 8)
            *(v8u *)(M + (lead + q) * C + c) = *(const v8u *)(xl + q * xi + c);
    memset(M + (lead + L) * C, 0, sizeof(float) * (size_t)((Lq - lead - L) * C));
    for (i64 s = 1; s < g->nslots; ++s) {
        const i64 len = g->lens[s], rows = (Lq - len + 1) * C;
        float *restrict Ms = M + s * Lq * C;
        if (g->parent[s] >= 0) {
            const float *restrict Mh = M + g->parent[s] * Lq * C, *restrict Mh2 = Mh + len / 2 * C;
            for (i64 e = 0; e < rows; ++e)
                Ms[e] = (Mh[e] + Mh2[e]) * 0.5f;
        } else {
            const float w = 1.0f / (float)len;
            for (i64 e = 0; e < rows; ++e) {
                float acc = 0.0f;
                for (i64 m = 0; m < len; ++m)
                    acc += M[e + m * C];
                Ms[e] = acc * w;
            }
        }
    }
}

/* The adjoint of build_means: the gradients of the means gM (same layout) into the gradient of the
 * line, gx[q] for q in [0, L) (gM is overwritten: longer means fold into their halves). */
static void box_means_adjoint(const Geo *g, float *gM, float *gxl, i64 gi)
{
    const i64 C = g->C, L = g->L, Lq = g->Lq, lead = -g->dmin;
    for (i64 s = g->nslots - 1; s > 0; --s) {
        const i64 len = g->lens[s], rows = (Lq - len + 1) * C;
        const float *restrict Gs = gM + s * Lq * C;
        if (g->parent[s] >= 0) {
            float *restrict Gh = gM + g->parent[s] * Lq * C;
            for (i64 e = 0; e < rows; ++e)
                Gh[e] += 0.5f * Gs[e];
            float *restrict Gh2 = Gh + len / 2 * C;
            for (i64 e = 0; e < rows; ++e)
                Gh2[e] += 0.5f * Gs[e];
        } else {
            const float w = 1.0f / (float)len;
            for (i64 m = 0; m < len; ++m) {
                float *restrict G0 = gM + m * C;
                for (i64 e = 0; e < rows; ++e)
                    G0[e] += w * Gs[e];
            }
        }
    }
    for (i64 q = 0; q < L; ++q)
        for (i64 c = 0; c < C; c += 8)
            *(v8u *)(gxl + q * gi + c) = *(const v8u *)(gM + (lead + q) * C + c);
}

/* Software prefetch of the cache lines of one pixel's `bytes` bytes (rw 1: about to be written).
 * A line is read in a burst (into the line buffers) and then computed: asking for the next line's
 * pixels meanwhile hides the memory latency (most of all for the vertical FSA, whose columns are a
 * stride walk of a whole image row per pixel). */
static inline void prefetch_span(const void *p, i64 bytes, int rw)
{
    const char *c = p;
    for (i64 e = 0; e < bytes; e += 64)
        rw ? __builtin_prefetch(c + e, 1, 3) : __builtin_prefetch(c + e, 0, 3);
    rw ? __builtin_prefetch(c + bytes - 1, 1, 3) : __builtin_prefetch(c + bytes - 1, 0, 3); /* a straddled last line */
}

static inline void prefetch_pixel(const float *p, i64 n, int rw)
{
    prefetch_span(p, 4 * n, rw);
}

static inline __attribute__((always_inline)) void fast_forward_lines(
    const Geo *g, i64 G, i64 VG, i64 K, const float *x, const float *k, float *out,
    i64 xb, i64 xj, i64 xi, i64 kb, i64 kj, i64 ki, i64 ob, i64 oj, i64 oi, i64 line0, i64 line1, float *M)
{
    /* G groups of VG vectors each and K taps (compile-time constants in the specialised calls): all
     * G * VG accumulators of a pixel live in registers while the taps stream through */
    const i64 C = g->C, L = g->L, V = G * VG;
    v8 acc[MAX_VECTORS];
    for (i64 l = line0; l < line1; ++l) {
        const i64 b = l / g->J, j = l % g->J;
        build_means(g, x + b * xb + j * xj, xi, M);
        i64 ks = ki;
        const float *kl = coefficients(g, g->act, k + b * kb + j * kj, &ks, g->T);
        float *ol = out + b * ob + j * oj;
        const i64 bn = (l + 1) / g->J, jn = (l + 1) % g->J, F = sizeof(float); /* the next line, prefetched */
        const Ahead next = {(const char *)(x + bn * xb + jn * xj), (const char *)(k + bn * kb + jn * kj),
                            (char *)(out + bn * ob + jn * oj), F * xi, F * ki, F * oi, F * C, F * G * K, F * C};
        const Ahead *pf = g->ahead ? g->ahead : l + 1 < line1 ? &next : NULL;
        for (i64 i = 0; i < L; ++i) {
            const float *kp = kl + i * ks;
            const float *Mi = M + i * C;
            if (pf) {
                prefetch_span(pf->x + i * pf->xi, pf->xn, 0), prefetch_span(pf->k + i * pf->ki, pf->kn, 0);
                prefetch_span(pf->o + i * pf->oi, pf->on, 1);
            }
            for (i64 v = 0; v < V; ++v)
                acc[v] = (v8){0};
            for (i64 t = 0; t < K; ++t) {
                const float *m = Mi + g->off[t];
                for (i64 gg = 0; gg < G; ++gg) {
                    const float w = kp[gg * K + t];
                    for (i64 v = 0; v < VG; ++v)
                        acc[gg * VG + v] += w * *(const v8u *)(m + (gg * VG + v) * 8);
                }
            }
            for (i64 v = 0; v < V; ++v)
                *(v8u *)(ol + i * oi + 8 * v) = acc[v];
        }
    }
}


/* The line's kernel gradient from the dense buffer B (L x G*K) into gk (pixels bi apart), with the
 * tanh backward where the coefficients are logits (T: the activated coefficients, same layout). */
static void store_kernel_grad(const Geo *g, const float *B, const float *T, i64 act, float *bl, i64 bi)
{
    const i64 GK = g->G * g->K;
    const v8 one = (v8){0} + 1.0f;
    for (i64 i = 0; i < g->L; ++i) {
        const float *bp = B + i * GK, *tp = act ? T + i * GK : NULL;
        float *op = bl + i * bi;
        i64 e = 0;
        for (; e + 8 <= GK; e += 8) {
            const v8 b = *(const v8u *)(bp + e);
            if (act) {
                const v8 t = *(const v8u *)(tp + e);
                *(v8u *)(op + e) = b * (one - t * t);
            } else {
                *(v8u *)(op + e) = b;
            }
        }
        for (; e < GK; ++e)
            op[e] = act ? bp[e] * (1.0f - tp[e] * tp[e]) : bp[e];
    }
}

static inline __attribute__((always_inline)) void fast_backward_lines(
    const Geo *g, i64 G, i64 VG, i64 K, const float *gout, const float *x, const float *k, float *gx, float *gk,
    i64 gb, i64 gj, i64 gi, i64 xb, i64 xj, i64 xi, i64 kb, i64 kj, i64 ki,
    i64 ab, i64 aj, i64 ai, i64 bb, i64 bj, i64 bi, i64 line0, i64 line1, float *M, float *gM, float *B)
{
    /* G groups of VG vectors and K taps (compile-time constants in the specialised calls). Per pixel
     * and group, the dot products of up to eight taps are reduced together (hsum8x8) and stored as
     * one vector into the dense line buffer B; the kernel gradient leaves B in one pass per line. */
    const i64 C = g->C, L = g->L, GK = G * K;
    v8 gv[MAX_VECTORS];
    for (i64 l = line0; l < line1; ++l) {
        const i64 b = l / g->J, j = l % g->J;
        build_means(g, x + b * xb + j * xj, xi, M);
        memset(gM, 0, sizeof(float) * (size_t)(g->nslots * g->Lq * C));
        const float *gl = gout + b * gb + j * gj;
        i64 ks = ki;
        const float *kl = coefficients(g, g->act, k + b * kb + j * kj, &ks, g->T);
        const i64 bn = (l + 1) / g->J, jn = (l + 1) % g->J; /* the next line, prefetched */
        const float *xn = x + bn * xb + jn * xj, *gn = gout + bn * gb + jn * gj, *kn = k + bn * kb + jn * kj;
        float *al = gx + b * ab + j * aj, *bl = gk + b * bb + j * bj; /* written at the end of the line */
        const int ahead = l + 1 < line1;
        for (i64 i = 0; i < L; ++i) {
            const float *kp = kl + i * ks;
            const float *gp = gl + i * gi;
            const i64 Ci = i * C;
            if (ahead) {
                prefetch_pixel(xn + i * xi, C, 0), prefetch_pixel(gn + i * gi, C, 0), prefetch_pixel(kn + i * ki, GK, 0);
                prefetch_pixel(al + i * ai, C, 1), prefetch_pixel(bl + i * bi, GK, 1);
            }
            for (i64 v = 0; v < G * VG; ++v)
                gv[v] = *(const v8u *)(gp + 8 * v);
            for (i64 gg = 0; gg < G; ++gg) {
                for (i64 t0 = 0; t0 < K; t0 += 8) {
                    v8 d[8];
                    for (i64 u = 0; u < 8; ++u) {
                        d[u] = (v8){0};
                        if (t0 + u < K)
                            for (i64 v = 0; v < VG; ++v)
                                d[u] += gv[gg * VG + v] * *(const v8u *)(M + Ci + g->off[t0 + u] + (gg * VG + v) * 8);
                    }
                    /* up to 7 values past this group's taps: overwritten by the next group or pixel (B has 8 spare) */
                    *(v8u *)(B + i * GK + gg * K + t0) = hsum8x8(d);
                }
                for (i64 t = 0; t < K; ++t) {
                    const float w = kp[gg * K + t];
                    float *gm = gM + Ci + g->off[t] + gg * VG * 8;
                    for (i64 v = 0; v < VG; ++v)
                        *(v8u *)(gm + 8 * v) += w * gv[gg * VG + v];
                }
            }
        }
        store_kernel_grad(g, B, g->act ? kl : NULL, g->act, bl, bi);
        box_means_adjoint(g, gM, al, ai);
    }
}

/* ---- generic path: any channels per group, one tap at a time --------------------------------- */

static void generic_forward_lines(
    const Geo *g, const float *x, const float *k, float *out,
    i64 xb, i64 xj, i64 xi, i64 kb, i64 kj, i64 ki, i64 ob, i64 oj, i64 oi, i64 line0, i64 line1)
{
    const i64 L = g->L, K = g->K, P = g->P;
    float acc[MAX_GROUP];
    for (i64 l = line0; l < line1; ++l) {
        const i64 b = l / g->J, j = l % g->J;
        const float *xl = x + b * xb + j * xj;
        i64 ks = ki;
        const float *kl = coefficients(g, g->act, k + b * kb + j * kj, &ks, g->T);
        float *ol = out + b * ob + j * oj;
        for (i64 i = 0; i < L; ++i) {
            for (i64 gg = 0; gg < g->G; ++gg) {
                for (i64 p = 0; p < P; ++p)
                    acc[p] = 0.0f;
                for (i64 t = 0; t < K; ++t) {
                    const i64 q0 = i + g->lo[t];
                    const i64 m0 = q0 < 0 ? -q0 : 0, m1 = q0 + g->n[t] > L ? L - q0 : g->n[t];
                    const float w = kl[i * ks + gg * K + t] * g->inv[t];
                    for (i64 m = m0; m < m1; ++m) {
                        const float *xr = xl + (q0 + m) * xi + gg * P;
                        for (i64 p = 0; p < P; ++p)
                            acc[p] += w * xr[p];
                    }
                }
                for (i64 p = 0; p < P; ++p)
                    ol[i * oi + gg * P + p] = acc[p];
            }
        }
    }
}

static void generic_backward_lines(
    const Geo *g, const float *gout, const float *x, const float *k, float *gx, float *gk,
    i64 gb, i64 gj, i64 gi, i64 xb, i64 xj, i64 xi, i64 kb, i64 kj, i64 ki,
    i64 ab, i64 aj, i64 ai, i64 bb, i64 bj, i64 bi, i64 line0, i64 line1)
{
    const i64 L = g->L, K = g->K, P = g->P;
    for (i64 l = line0; l < line1; ++l) {
        const i64 b = l / g->J, j = l % g->J;
        const float *gl = gout + b * gb + j * gj;
        const float *xl = x + b * xb + j * xj;
        i64 ks = ki;
        const float *kl = coefficients(g, g->act, k + b * kb + j * kj, &ks, g->T);
        float *al = gx + b * ab + j * aj;
        float *bl = gk + b * bb + j * bj;
        for (i64 i = 0; i < L; ++i)
            for (i64 c = 0; c < g->C; ++c)
                al[i * ai + c] = 0.0f;
        for (i64 i = 0; i < L; ++i) {
            for (i64 gg = 0; gg < g->G; ++gg) {
                const float *go = gl + i * gi + gg * P;
                for (i64 t = 0; t < K; ++t) {
                    const i64 q0 = i + g->lo[t];
                    const i64 m0 = q0 < 0 ? -q0 : 0, m1 = q0 + g->n[t] > L ? L - q0 : g->n[t];
                    const float w = kl[i * ks + gg * K + t] * g->inv[t];
                    float s = 0.0f;
                    for (i64 m = m0; m < m1; ++m) {
                        const float *xr = xl + (q0 + m) * xi + gg * P;
                        float *ar = al + (q0 + m) * ai + gg * P;
                        for (i64 p = 0; p < P; ++p) {
                            s += go[p] * xr[p];
                            ar[p] += w * go[p];
                        }
                    }
                    bl[i * bi + gg * K + t] = s * g->inv[t];
                }
            }
            if (g->act)
                tanh_backward(bl + i * bi, kl + i * ks, g->G * K);
        }
    }
}

/* ---- entry points (ctypes) ------------------------------------------------------------------- */

/* Scratch of one call: box means (and, backward, their gradients and the kernel gradient's line
 * buffer B, 8 values spare), activated coefficients of one line (T, after the means). */
static float *scratch(Geo *g, int backward)
{
    const int fast = g->P % 8 == 0;
    const size_t line = (size_t)(g->L * g->G * g->K);
    const size_t means = fast ? (size_t)(g->nslots * g->Lq * g->C) * (backward ? 2 : 1) : 0;
    const size_t coeff = g->act ? line : 0, grad = fast && backward ? line + 8 : 0;
    float *buf = malloc(sizeof(float) * (means + coeff + grad + 1));
    if (buf)
        g->T = buf + means;
    return buf;
}

/* Geometry and scratch of one call: 0, 1 for unsupported taps / groups, 2 if the buffers cannot be allocated. */
static int begin(Geo *g, i64 J, i64 L, i64 C, i64 G, i64 K, const i64 *lo, const i64 *n, i64 dmin, i64 dmax,
                 i64 act, int backward, float **M)
{
    if (setup(g, J, L, C, G, K, lo, n, dmin, dmax) || C / 8 > MAX_VECTORS || g->P > MAX_GROUP)
        return 1;
    g->act = act;
    *M = scratch(g, backward);
    return *M ? 0 : 2;
}

static void forward_lines(const Geo *g, const float *x, const float *k, float *out, i64 xb, i64 xj, i64 xi,
                          i64 kb, i64 kj, i64 ki, i64 ob, i64 oj, i64 oi, i64 line0, i64 line1, float *M)
{
    if (g->P % 8)
        generic_forward_lines(g, x, k, out, xb, xj, xi, kb, kj, ki, ob, oj, oi, line0, line1);
    else if (g->G == 4 && g->P == 8 && g->K == 13) /* LAMNet: constant trip counts, the whole pixel in registers */
        fast_forward_lines(g, 4, 1, 13, x, k, out, xb, xj, xi, kb, kj, ki, ob, oj, oi, line0, line1, M);
    else
        fast_forward_lines(g, g->G, g->P / 8, g->K, x, k, out, xb, xj, xi, kb, kj, ki, ob, oj, oi, line0, line1, M);
}

/* Returns 0 on success, 1 for unsupported taps / groups, 2 if a line buffer cannot be allocated. */
int lightsr_fsa_forward(
    const float *x, const float *k, float *out, i64 J, i64 L, i64 C, i64 G, i64 K,
    const i64 *lo, const i64 *n, i64 dmin, i64 dmax, i64 act,
    i64 xb, i64 xj, i64 xi, i64 kb, i64 kj, i64 ki, i64 ob, i64 oj, i64 oi, i64 line0, i64 line1)
{
    Geo g;
    float *M;
    const int rc = begin(&g, J, L, C, G, K, lo, n, dmin, dmax, act, 0, &M);
    if (rc)
        return rc;
    forward_lines(&g, x, k, out, xb, xj, xi, kb, kj, ki, ob, oj, oi, line0, line1, M);
    free(M);
    return 0;
}

/* ---- bfloat16 storage (inference under CPU autocast) ------------------------------------------ */

/* n values of each of L pixels (src pixels `stride` apart) into dense float32 rows */
static void widen_line(const uint16_t *src, i64 stride, i64 L, i64 n, float *dst)
{
    for (i64 i = 0; i < L; ++i, dst += n) {
        const uint16_t *p = src + i * stride;
        i64 c = 0;
        for (; c + 8 <= n; c += 8)
            st_f32(dst + c, ld_bf16(p + c));
        for (; c < n; ++c)
            dst[c] = lds_bf16(p + c);
    }
}

#define NARROW_LINE(NAME, ATTR, STORE)                                                                         \
    ATTR static void NAME(const float *src, i64 L, i64 n, uint16_t *dst, i64 stride)                           \
    {                                                                                                          \
        for (i64 i = 0; i < L; ++i, src += n) {                                                                \
            uint16_t *p = dst + i * stride;                                                                    \
            i64 c = 0;                                                                                         \
            for (; c + 8 <= n; c += 8)                                                                         \
                STORE(p + c, ld_f32(src + c));                                                                 \
            for (; c < n; ++c)                                                                                 \
                sts_bf16(p + c, src[c]);                                                                       \
        }                                                                                                      \
    }
NARROW_LINE(narrow_line, , st_bf16)
#ifdef LIGHTSR_BF16_CVT
NARROW_LINE(narrow_line_cvt, LIGHTSR_BF16_TARGET, st_bf16_cvt) /* one instruction per vector where the CPU has it */
#endif

typedef void (*narrow_fn)(const float *, i64, i64, uint16_t *, i64);

static narrow_fn narrowing(void)
{
#ifdef LIGHTSR_BF16_CVT
    if (__builtin_cpu_supports("avx512bf16"))
        return narrow_line_cvt;
#endif
    return narrow_line;
}

/* The forward on bfloat16 x, coefficients and output (float32 arithmetic, the same numbers as the
 * float32 kernel on the widened values): each line is widened into float32 line buffers (L2-sized),
 * computed as above and rounded back, so the tensors never exist in float32 (at inference under
 * autocast three whole-tensor conversions and their memory traffic). The logits are activated in
 * their widened buffer (no second copy). */
int lightsr_fsa_forward_bf16(
    const uint16_t *x, const uint16_t *k, uint16_t *out, i64 J, i64 L, i64 C, i64 G, i64 K,
    const i64 *lo, const i64 *n, i64 dmin, i64 dmax, i64 act,
    i64 xb, i64 xj, i64 xi, i64 kb, i64 kj, i64 ki, i64 ob, i64 oj, i64 oi, i64 line0, i64 line1)
{
    Geo g;
    float *M;
    const int rc = begin(&g, J, L, C, G, K, lo, n, dmin, dmax, act, 0, &M);
    if (rc)
        return rc;
    const i64 GK = G * K;
    float *xs = malloc(sizeof(float) * (size_t)(L * (2 * C + GK)));
    if (!xs) {
        free(M);
        return 2;
    }
    float *os = xs + L * C, *ks = os + L * C;
    const narrow_fn narrow = narrowing();
    g.act = 0; /* tanh below, in place */
    for (i64 l = line0; l < line1; ++l) {
        const i64 b = l / J, j = l % J;
        widen_line(x + b * xb + j * xj, xi, L, C, xs);
        widen_line(k + b * kb + j * kj, ki, L, GK, ks);
        if (act)
            tanh_in_place(ks, L * GK);
        const i64 bn = (l + 1) / J, jn = (l + 1) % J, H = sizeof(uint16_t); /* prefetched while this line computes */
        const Ahead next = {(const char *)(x + bn * xb + jn * xj), (const char *)(k + bn * kb + jn * kj),
                            (char *)(out + b * ob + j * oj), H * xi, H * ki, H * oi, H * C, H * GK, H * C};
        g.ahead = l + 1 < line1 ? &next : NULL;
        forward_lines(&g, xs, ks, os, 0, 0, C, 0, 0, GK, 0, 0, C, 0, 1, M);
        narrow(os, L, C, out + b * ob + j * oj, oi);
    }
    free(xs);
    free(M);
    return 0;
}

int lightsr_fsa_backward(
    const float *gout, const float *x, const float *k, float *gx, float *gk,
    i64 J, i64 L, i64 C, i64 G, i64 K, const i64 *lo, const i64 *n, i64 dmin, i64 dmax, i64 act,
    i64 gb, i64 gj, i64 gi, i64 xb, i64 xj, i64 xi, i64 kb, i64 kj, i64 ki,
    i64 ab, i64 aj, i64 ai, i64 bb, i64 bj, i64 bi, i64 line0, i64 line1)
{
    Geo g;
    float *M;
    const int rc = begin(&g, J, L, C, G, K, lo, n, dmin, dmax, act, 1, &M);
    if (rc)
        return rc;
    float *gM = M + (g.P % 8 ? 0 : g.nslots * g.Lq * C);
    float *B = g.T + (act ? L * G * K : 0);
    if (g.P % 8)
        generic_backward_lines(&g, gout, x, k, gx, gk, gb, gj, gi, xb, xj, xi, kb, kj, ki, ab, aj, ai, bb, bj, bi,
                               line0, line1);
    else if (G == 4 && g.P == 8 && K == 13) /* LAMNet: constant trip counts, the whole pixel in registers */
        fast_backward_lines(&g, 4, 1, 13, gout, x, k, gx, gk, gb, gj, gi, xb, xj, xi, kb, kj, ki, ab, aj, ai, bb, bj,
                            bi, line0, line1, M, gM, B);
    else
        fast_backward_lines(&g, G, g.P / 8, K, gout, x, k, gx, gk, gb, gj, gi, xb, xj, xi, kb, kj, ki, ab, aj, ai, bb,
                            bj, bi, line0, line1, M, gM, B);
    free(M);
    return 0;
}
