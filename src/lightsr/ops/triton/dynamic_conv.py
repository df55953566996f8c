"""Triton kernels of the pixel-wise dynamic depth-wise convolution (DLGSANet's MHDLSA).

Same contract as :func:`lightsr.ops.dynamic_dwconv` and :func:`lightsr.ops.dynamic_dwconv_fused`
(see :mod:`lightsr.ops.dynamic_dwconv` for the formula): every output pixel has its own K x K
kernel, shared by the ``C / G`` consecutive channels of a group; zeros outside the image.

Work split: one program per (block of ``BLOCK`` pixels, image, kernel group). The program builds
the group's ``K*K`` tap weights of its pixels once, in registers (a ``(K*K, BLOCK)`` tile: in the
fused form straight from the hidden features and the 1x1 kernel, ``bias + W_k @ hidden``, so the
``G*K*K``-channel kernel tensor never exists), then applies them to each channel of the group
with one gathered ``(K*K, BLOCK)`` load of the input and a sum over the taps.

Backward, two launches (plus one sum per parameter of the 1x1 convolution):

* ``_grad_x_kernel``: ``dx[q] = sum_t w_t[q - o_t] * dy[q - o_t]`` as a gather (no atomics): the
  tap weights are rebuilt at the shifted pixels (fused: from the hidden features there).
* ``_grad_w_kernel``: per (pixel block, image), for each group the tap-weight gradient
  ``dw_t[p] = sum_c dy[c, p] x[c, p + o_t]``; unfused it is stored, fused it goes on through the
  1x1 convolution in registers: ``d hidden += W_k^T dw`` (summed over the groups in the program),
  and the per-program partial ``dW_k = dw hidden^T`` / ``db = sum dw``, summed by torch afterwards
  (deterministic, no atomics).

Everything accumulates in float32; inputs may be float32, bfloat16 or float16 (the 1x1 kernel may
be float32 beside reduced-precision features, as under autocast) in any memory layout (strides
are kernel arguments: no copies).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from lightsr.ops.triton._common import check_dtypes, next_pow2

__all__ = ["dynamic_dwconv", "dynamic_dwconv_fused"]

BLOCK = 64  # pixels per program
# size arguments compiled as plain integers (strides are specialised: 1 and multiples of 16 matter for loads)
SIZES = ["H", "W", "G", "CG", "CH", "NPB"]


@triton.jit
def _taps(src_ptr, wk_ptr, bias_ptr, b, rows, tm, hh, ww, valid, CH,
          ss_b, ss_c, ss_h, ss_w, sk_r, sk_c,
          KK_PAD: tl.constexpr, BLOCK: tl.constexpr, FUSED: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Tap weights ``rows`` (KK_PAD,) at pixels (hh, ww) as a float32 (KK_PAD, BLOCK) tile, zero
    where ``valid & tm`` is false. Fused: ``bias + sum_ch W_k[rows, ch] * hidden[ch]``; else read."""
    base = src_ptr + b.to(tl.int64) * ss_b + hh * ss_h + ww * ss_w
    mask = valid & tm[:, None]
    if FUSED:
        acc = tl.zeros((KK_PAD, BLOCK), tl.float32)
        for ch in range(CH):
            col = tl.load(wk_ptr + rows * sk_r + ch * sk_c, mask=tm, other=0.0).to(tl.float32)
            hv = tl.load(base + ch * ss_c, mask=valid, other=0.0).to(tl.float32)
            acc += col[:, None] * hv
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rows, mask=tm, other=0.0).to(tl.float32)[:, None]
        acc = tl.where(mask, acc, 0.0)
    else:
        acc = tl.load(base + rows[:, None] * ss_c, mask=mask, other=0.0).to(tl.float32)
    return acc


@triton.jit(do_not_specialize=SIZES)
def _fwd_kernel(x_ptr, src_ptr, wk_ptr, bias_ptr, out_ptr, H, W, G, CG, CH,
                sx_b, sx_c, sx_h, sx_w, ss_b, ss_c, ss_h, ss_w, sk_r, sk_c, so_b, so_c, so_h, so_w,
                K: tl.constexpr, KK_PAD: tl.constexpr, BLOCK: tl.constexpr,
                FUSED: tl.constexpr, HAS_BIAS: tl.constexpr):
    b = tl.program_id(1) // G
    g = tl.program_id(1) % G
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    pm = p < H * W
    h = p // W
    w = p % W
    t = tl.arange(0, KK_PAD)
    tm = t < K * K
    wt = _taps(src_ptr, wk_ptr, bias_ptr, b, g * K * K + t, tm, h[None, :], w[None, :], pm[None, :], CH,
               ss_b, ss_c, ss_h, ss_w, sk_r, sk_c, KK_PAD, BLOCK, FUSED, HAS_BIAS)
    hs = h[None, :] + (t // K - K // 2)[:, None]  # pixel read by tap t
    ws = w[None, :] + (t % K - K // 2)[:, None]
    m = tm[:, None] & pm[None, :] & (hs >= 0) & (hs < H) & (ws >= 0) & (ws < W)
    xb = x_ptr + b.to(tl.int64) * sx_b + hs * sx_h + ws * sx_w
    ob = out_ptr + b.to(tl.int64) * so_b + h * so_h + w * so_w
    for cc in range(CG):
        c = g * CG + cc
        xv = tl.load(xb + c * sx_c, mask=m, other=0.0).to(tl.float32)
        tl.store(ob + c * so_c, tl.sum(xv * wt, axis=0).to(out_ptr.dtype.element_ty), mask=pm)


@triton.jit(do_not_specialize=SIZES)
def _grad_x_kernel(g_ptr, src_ptr, wk_ptr, bias_ptr, gx_ptr, H, W, G, CG, CH,
                   sg_b, sg_c, sg_h, sg_w, ss_b, ss_c, ss_h, ss_w, sk_r, sk_c, sx_b, sx_c, sx_h, sx_w,
                   K: tl.constexpr, KK_PAD: tl.constexpr, BLOCK: tl.constexpr,
                   FUSED: tl.constexpr, HAS_BIAS: tl.constexpr):
    b = tl.program_id(1) // G
    g = tl.program_id(1) % G
    q = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    qm = q < H * W
    h = q // W
    w = q % W
    t = tl.arange(0, KK_PAD)
    tm = t < K * K
    hs = h[None, :] - (t // K - K // 2)[:, None]  # output pixel whose tap t read q
    ws = w[None, :] - (t % K - K // 2)[:, None]
    valid = qm[None, :] & (hs >= 0) & (hs < H) & (ws >= 0) & (ws < W)
    wt = _taps(src_ptr, wk_ptr, bias_ptr, b, g * K * K + t, tm, hs, ws, valid, CH,
               ss_b, ss_c, ss_h, ss_w, sk_r, sk_c, KK_PAD, BLOCK, FUSED, HAS_BIAS)
    m = valid & tm[:, None]
    gb = g_ptr + b.to(tl.int64) * sg_b + hs * sg_h + ws * sg_w
    xb = gx_ptr + b.to(tl.int64) * sx_b + h * sx_h + w * sx_w
    for cc in range(CG):
        c = g * CG + cc
        gv = tl.load(gb + c * sg_c, mask=m, other=0.0).to(tl.float32)
        tl.store(xb + c * sx_c, tl.sum(gv * wt, axis=0).to(gx_ptr.dtype.element_ty), mask=qm)


@triton.jit(do_not_specialize=SIZES)
def _grad_w_kernel(g_ptr, x_ptr, src_ptr, wk_ptr, gsrc_ptr, pcw_ptr, pcb_ptr, H, W, G, CG, CH, NPB,
                   sg_b, sg_c, sg_h, sg_w, sx_b, sx_c, sx_h, sx_w, ss_b, ss_c, ss_h, ss_w, sk_r, sk_c,
                   sd_b, sd_c, sd_h, sd_w,
                   K: tl.constexpr, KK_PAD: tl.constexpr, CH_PAD: tl.constexpr, BLOCK: tl.constexpr,
                   FUSED: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Unfused: d weight. Fused: d hidden and this program's partial d W_k, d bias."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    b64 = b.to(tl.int64)
    p = pid * BLOCK + tl.arange(0, BLOCK)
    pm = p < H * W
    h = p // W
    w = p % W
    t = tl.arange(0, KK_PAD)
    tm = t < K * K
    hs = h[None, :] + (t // K - K // 2)[:, None]
    ws = w[None, :] + (t % K - K // 2)[:, None]
    m = tm[:, None] & pm[None, :] & (hs >= 0) & (hs < H) & (ws >= 0) & (ws < W)
    chs = tl.arange(0, CH_PAD)
    cm = chs < CH
    prow = (b64 * NPB + pid) * G * K * K  # this program's rows of the partial sums
    if FUSED:
        hid_t = tl.load(src_ptr + b64 * ss_b + chs[None, :] * ss_c + h[:, None] * ss_h + w[:, None] * ss_w,
                        mask=pm[:, None] & cm[None, :], other=0.0).to(tl.float32)  # (BLOCK, CH_PAD)
        gh = tl.zeros((CH_PAD, BLOCK), tl.float32)
    for g in range(G):
        gw = tl.zeros((KK_PAD, BLOCK), tl.float32)
        for cc in range(CG):
            c = g * CG + cc
            gv = tl.load(g_ptr + b64 * sg_b + c * sg_c + h * sg_h + w * sg_w, mask=pm, other=0.0).to(tl.float32)
            xv = tl.load(x_ptr + b64 * sx_b + c * sx_c + hs * sx_h + ws * sx_w, mask=m, other=0.0).to(tl.float32)
            gw += gv[None, :] * xv
        rows = g * K * K + t
        if FUSED:
            wk_t = tl.load(wk_ptr + rows[None, :] * sk_r + chs[:, None] * sk_c,
                           mask=cm[:, None] & tm[None, :], other=0.0).to(tl.float32)  # (CH_PAD, KK_PAD)
            gh += tl.dot(wk_t, gw, input_precision="ieee")
            pcw = tl.dot(gw, hid_t, input_precision="ieee")  # (KK_PAD, CH_PAD)
            tl.store(pcw_ptr + (prow + rows[:, None]) * CH + chs[None, :], pcw, mask=tm[:, None] & cm[None, :])
            if HAS_BIAS:
                tl.store(pcb_ptr + prow + rows, tl.sum(gw, axis=1), mask=tm)
        else:
            tl.store(gsrc_ptr + b64 * sd_b + rows[:, None] * sd_c + h[None, :] * sd_h + w[None, :] * sd_w,
                     gw.to(gsrc_ptr.dtype.element_ty), mask=tm[:, None] & pm[None, :])
    if FUSED:
        tl.store(gsrc_ptr + b64 * sd_b + chs[:, None] * sd_c + h[None, :] * sd_h + w[None, :] * sd_w,
                 gh.to(gsrc_ptr.dtype.element_ty), mask=cm[:, None] & pm[None, :])


# --- launches ---------------------------------------------------------------------------------


class _Shape:
    """Sizes of one call: x (B, C, H, W); ``src`` the per-pixel kernels (B, G*K*K, H, W) or, fused,
    the hidden features (B, C_h, H, W) with ``wk`` the 1x1 kernel (G*K*K, C_h, 1, 1)."""

    def __init__(self, x, src, wk, bias, k: int):
        if x.dim() != 4 or src.dim() != 4 or src.shape[0] != x.shape[0] or src.shape[2:] != x.shape[2:]:
            raise ValueError(f"x {tuple(x.shape)} and {tuple(src.shape)} must be (B, *, H, W) of one size")
        if k < 1 or k % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {k}")
        rows = src.shape[1] if wk is None else wk.shape[0]
        if wk is not None and (wk.dim() != 4 or tuple(wk.shape[1:]) != (src.shape[1], 1, 1)):
            raise ValueError(f"conv_weight {tuple(wk.shape)} must be a 1x1 kernel on {src.shape[1]} channels")
        if bias is not None and tuple(bias.shape) != (rows,):
            raise ValueError(f"conv_bias {tuple(bias.shape)} must have {rows} values")
        if rows % (k * k) or not rows or x.shape[1] % (rows // (k * k)):
            raise ValueError(f"{rows} kernel channels do not fit x {tuple(x.shape)} and kernel {k}")
        check_dtypes(x, src, wk, bias)
        self.b, self.c, self.h, self.w = x.shape
        self.k, self.groups = k, rows // (k * k)
        self.per_group = self.c // self.groups
        self.ch = src.shape[1] if wk is not None else 0
        self.blocks = triton.cdiv(self.h * self.w, BLOCK)

    def consts(self, fused: bool, has_bias: bool) -> dict:
        return dict(K=self.k, KK_PAD=next_pow2(self.k * self.k), BLOCK=BLOCK, FUSED=fused, HAS_BIAS=has_bias)


def _wk2(wk: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """The 1x1 kernel as a (rows, C_h) matrix view and its strides (a placeholder when unfused)."""
    if wk is None:
        return like, 0, 0
    m = wk.reshape(wk.shape[0], wk.shape[1])
    return m, m.stride(0), m.stride(1)


def _forward(x, src, wk, bias, k: int) -> torch.Tensor:
    s = _Shape(x, src, wk, bias, k)
    out = torch.empty_like(x)
    if out.numel():
        m, sk_r, sk_c = _wk2(wk, x)
        _fwd_kernel[(s.blocks, s.b * s.groups)](
            x, src, m, bias if bias is not None else x, out, s.h, s.w, s.groups, s.per_group, s.ch,
            *x.stride(), *src.stride(), sk_r, sk_c, *out.stride(), **s.consts(wk is not None, bias is not None))
    return out


def _grad_x(grad, x, src, wk, bias, k: int) -> torch.Tensor:
    s = _Shape(x, src, wk, bias, k)
    gx = torch.empty_like(x)
    if gx.numel():
        m, sk_r, sk_c = _wk2(wk, x)
        _grad_x_kernel[(s.blocks, s.b * s.groups)](
            grad, src, m, bias if bias is not None else x, gx, s.h, s.w, s.groups, s.per_group, s.ch,
            *grad.stride(), *src.stride(), sk_r, sk_c, *gx.stride(), **s.consts(wk is not None, bias is not None))
    return gx


def _grad_params(grad, x, src, wk, bias, k: int):
    """(d src, d W_k, d bias): d weight when unfused (the last two None), else d hidden and the 1x1's."""
    s = _Shape(x, src, wk, bias, k)
    gsrc = torch.empty_like(src)
    fused = wk is not None
    rows = s.groups * k * k
    n = s.b * s.blocks
    # partial sums of the 1x1's gradients (one-element placeholders when unused: never a null pointer)
    pcw = x.new_empty((n, rows, s.ch) if fused else (1,), dtype=torch.float32)
    pcb = x.new_empty((n, rows) if fused and bias is not None else (1,), dtype=torch.float32)
    if x.numel():
        m, sk_r, sk_c = _wk2(wk, x)
        consts = s.consts(fused, bias is not None)
        _grad_w_kernel[(s.blocks, s.b)](
            grad, x, src, m, gsrc, pcw, pcb, s.h, s.w, s.groups, s.per_group, s.ch, s.blocks,
            *grad.stride(), *x.stride(), *src.stride(), sk_r, sk_c, *gsrc.stride(),
            CH_PAD=next_pow2(s.ch), **consts)
    if not fused:
        return gsrc, None, None
    gwk = pcw.sum(0).view(wk.shape).to(wk.dtype) if n else torch.zeros_like(wk)
    gb = None
    if bias is not None:
        gb = pcb.sum(0).to(bias.dtype) if n else torch.zeros_like(bias)
    return gsrc, gwk, gb


class _DynamicDWConv(torch.autograd.Function):
    """(x, src, wk, bias, k): unfused when ``wk`` is None (``src`` = the per-pixel kernels)."""

    @staticmethod
    def forward(ctx, x, src, wk, bias, k):
        ctx.save_for_backward(x, src, wk, bias)
        ctx.k = k
        return _forward(x, src, wk, bias, k)

    @staticmethod
    def backward(ctx, grad):
        x, src, wk, bias = ctx.saved_tensors
        need = ctx.needs_input_grad
        gx = _grad_x(grad, x, src, wk, bias, ctx.k) if need[0] else None
        gsrc = gwk = gb = None
        if any(need[1:4]):
            gsrc, gwk, gb = _grad_params(grad, x, src, wk, bias, ctx.k)
        return (gx, gsrc if need[1] else None, gwk if need[2] else None,
                gb if need[3] else None, None)


def dynamic_dwconv(x: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Triton :func:`lightsr.ops.dynamic_dwconv`: ``weight`` (B, G*K*K, H, W) per-pixel kernels."""
    return _DynamicDWConv.apply(x, weight, None, None, int(kernel_size))


def dynamic_dwconv_fused(
    x: torch.Tensor, hidden: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor | None, kernel_size: int
) -> torch.Tensor:
    """Triton :func:`lightsr.ops.dynamic_dwconv_fused`: the kernels ``conv2d(hidden, conv_weight,
    conv_bias)`` are computed in registers where they are used and never stored."""
    return _DynamicDWConv.apply(x, hidden, conv_weight, conv_bias, int(kernel_size))
