/* Depth-wise convolution on channels-last tensors (CPU), float32 and bfloat16 storage, with the
 * gates of the gated feed-forward networks fused into the forward.
 *
 * x is (B, H, W, C) with unit channel stride (a channels-last tensor or a channel slice of one);
 * the weight is given transposed, w[(i * KW + j) * C + c] (float32 whatever the storage type);
 * stride 1, zero padding (PH, PW), dilation (DH, DW), the output the size of the input:
 *
 *   d[b, h, w, c] = bias[c] + sum_{i < KH, j < KW} w[i, j, c] * x[b, h + i DH - PH, w + j DW - PW, c]
 *
 * gate (the output y):
 *   GATE_NONE  y = d                                     (C channels)
 *   GATE_GELU  y = gelu(d1) * d2                         (C/2 channels; Restormer's GDFN)
 *   GATE_DUAL  y = [g * d1, g * d2], g = gelu(d1)        (C channels; LAMNet's DGFN)
 * with d1 / d2 the first / second half of d's channels and the exact (erf) GELU. The forward can
 * also store d (training: the gate's backward needs it). Backward: lightsr_dw_gate_backward turns
 * the gradient of y into that of d; the input gradient is the forward with the flipped kernel
 * (the caller flips it); lightsr_dw_weight_grad accumulates the kernel and bias gradients.
 *
 * Kernels (depthwise_impl.h): 3 x 3 rows of eight register-blocked pixels; other kernels the same
 * blocking over their taps, border blocks from zero-padded strips; K x 1 columns (no gate) on dense
 * column strips; the weight gradient in register runs of up to 12 taps per kernel row (wide kernels on
 * zero-padded rows), K x 1 columns down dense strips.
 *
 * Every entry point works on output rows [r0, r1) of the B * H rows, so callers split rows over
 * threads (the weight gradient into per-thread buffers). Return codes: 0 ok, 2 out of memory.
 */
#include <stdlib.h>
#include <string.h>

#include "simd.h"

enum { GATE_NONE = 0, GATE_GELU = 1, GATE_DUAL = 2 };

#ifndef DW_CHUNK
#define DW_CHUNK 48 /* output columns per chunk of the 3 x 3 kernel: 48 measured 5-14% faster than 16 or 32 at 128-192 channels, equal at 48 (AVX2 EPYC) */
#endif

typedef struct {
    i64 B, H, W, C;          /* batch, rows, columns, channels of x (and of d) */
    i64 KH, KW, DH, DW, PH, PW;
    i64 xb, xh, xw;          /* element strides of x (channel stride 1) */
    i64 yb, yh, yw;          /* of y (of the output gradient in the weight gradient) */
    i64 db, dh, dw;          /* of d (and of the gradient of d) */
    i64 gate;
} dw_geom;

#define T float
#define SFX f32
#define LD ld_f32
#define ST st_f32
#define LDS lds_f32
#define STS sts_f32
#include "depthwise_impl.h"
#undef T
#undef SFX
#undef LD
#undef ST
#undef LDS
#undef STS

#define T uint16_t
#define SFX bf16
#define LD ld_bf16
#define ST st_bf16
#define LDS lds_bf16
#define STS sts_bf16
#include "depthwise_impl.h"
#undef T
#undef SFX
#undef LD
#undef ST
#undef LDS
#undef STS

int lightsr_native_abi(void)
{
    return 1; /* bumped when an entry point's arguments change */
}
