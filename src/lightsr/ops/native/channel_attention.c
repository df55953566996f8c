/* The transposed (channel) attention of DLGSANet's SparseGSA for heads of 8 channels, at inference,
 * on windows of a dense channels-last qkv map (CPU, float32 or bfloat16 storage, float32 arithmetic;
 * entry points suffixed _f32 / _bf16): the whole map, or the overlapping
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

/* float32: the scalars are broadcast loads from memory; bfloat16: lanes of the widened vector */
#define T float
#define SFX f32
#define LD ld_f32
#define ST st_f32
#define LANE(p, v, i) ((void)(v), (p)[i])
#include "channel_attention_impl.h"
#undef T
#undef SFX
#undef LD
#undef ST
#undef LANE

#define T uint16_t
#define SFX bf16
#define LD ld_bf16
#define ST st_bf16
#define LANE(p, v, i) ((v)[i])
#include "channel_attention_impl.h"
#undef T
#undef SFX
#undef LD
#undef ST
#undef LANE
