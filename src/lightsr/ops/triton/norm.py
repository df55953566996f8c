"""Triton kernels of the channels-first LayerNorm (:func:`lightsr.ops.layer_norm_2d`).

    y[b, :, p] = (x[b, :, p] - mean) / sqrt(var + eps) * weight + bias     (biased variance)

On a GPU the models keep NCHW tensors, where ``F.layer_norm`` on the channels-last view needs a
copy in and a layout change out. Here one program normalises a (C, BLOCK) tile of one image in
registers, any layout. Backward: one launch for the input gradient and the per-program partial
sums of the weight and bias gradients (recomputing the statistics instead of storing them), then
one sum each.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from lightsr.ops.triton._common import check_dtypes, next_pow2

__all__ = ["layer_norm_2d"]

SIZES = ["C", "H", "W", "NPB"]  # compiled as plain integers (strides are specialised)


@triton.jit
def _tile(x_ptr, b64, cs, cm, h, w, pm, sx_b, sx_c, sx_h, sx_w, C, eps):
    """(x - mean) * rstd of a (C_PAD, BLOCK) tile, the mask, and rstd (BLOCK,)."""
    m = cm[:, None] & pm[None, :]
    x = tl.load(x_ptr + b64 * sx_b + cs[:, None] * sx_c + h[None, :] * sx_h + w[None, :] * sx_w,
                mask=m, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / C
    d = tl.where(m, x - mean[None, :], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / C + eps)
    return d * rstd[None, :], m, rstd


@triton.jit(do_not_specialize=SIZES)
def _fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, C, H, W, eps,
                sx_b, sx_c, sx_h, sx_w, sy_b, sy_c, sy_h, sy_w,
                C_PAD: tl.constexpr, BLOCK: tl.constexpr):
    b64 = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    pm = p < H * W
    h = p // W
    w = p % W
    cs = tl.arange(0, C_PAD)
    cm = cs < C
    xhat, m, _ = _tile(x_ptr, b64, cs, cm, h, w, pm, sx_b, sx_c, sx_h, sx_w, C, eps)
    wt = tl.load(w_ptr + cs, mask=cm, other=0.0).to(tl.float32)
    bs = tl.load(b_ptr + cs, mask=cm, other=0.0).to(tl.float32)
    y = xhat * wt[:, None] + bs[:, None]
    tl.store(y_ptr + b64 * sy_b + cs[:, None] * sy_c + h[None, :] * sy_h + w[None, :] * sy_w,
             y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=SIZES)
def _bwd_kernel(g_ptr, x_ptr, w_ptr, gx_ptr, pw_ptr, pb_ptr, C, H, W, NPB, eps,
                sg_b, sg_c, sg_h, sg_w, sx_b, sx_c, sx_h, sx_w, sd_b, sd_c, sd_h, sd_w,
                C_PAD: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b64 = tl.program_id(1).to(tl.int64)
    p = pid * BLOCK + tl.arange(0, BLOCK)
    pm = p < H * W
    h = p // W
    w = p % W
    cs = tl.arange(0, C_PAD)
    cm = cs < C
    xhat, m, rstd = _tile(x_ptr, b64, cs, cm, h, w, pm, sx_b, sx_c, sx_h, sx_w, C, eps)
    gy = tl.load(g_ptr + b64 * sg_b + cs[:, None] * sg_c + h[None, :] * sg_h + w[None, :] * sg_w,
                 mask=m, other=0.0).to(tl.float32)
    wt = tl.load(w_ptr + cs, mask=cm, other=0.0).to(tl.float32)
    wg = gy * wt[:, None]
    a = tl.sum(wg, axis=0) / C
    bb = tl.sum(wg * xhat, axis=0) / C
    gx = (wg - a[None, :] - xhat * bb[None, :]) * rstd[None, :]
    tl.store(gx_ptr + b64 * sd_b + cs[:, None] * sd_c + h[None, :] * sd_h + w[None, :] * sd_w,
             gx.to(gx_ptr.dtype.element_ty), mask=m)
    row = (b64 * NPB + pid) * C
    tl.store(pw_ptr + row + cs, tl.sum(gy * xhat, axis=1), mask=cm)
    tl.store(pb_ptr + row + cs, tl.sum(gy, axis=1), mask=cm)


def _sizes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    if x.dim() != 4:
        raise ValueError(f"layer_norm_2d expects x (B, C, H, W), got {tuple(x.shape)}")
    b, c, h, w = x.shape
    if weight.numel() != c or bias.numel() != c:
        raise ValueError(f"weight and bias must hold {c} values, got {weight.numel()} and {bias.numel()}")
    check_dtypes(x, weight, bias)
    c_pad = next_pow2(c)
    block = max(16, min(128, 4096 // c_pad))  # a tile of at most 4096 values
    return b, c, h, w, c_pad, block


class _LayerNorm2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        b, c, h, w, c_pad, block = _sizes(x, weight, bias)
        wv, bv = weight.reshape(c).contiguous(), bias.reshape(c).contiguous()
        y = torch.empty_like(x)
        if y.numel():
            _fwd_kernel[(triton.cdiv(h * w, block), b)](x, wv, bv, y, c, h, w, float(eps), *x.stride(), *y.stride(),
                                                        C_PAD=c_pad, BLOCK=block)
        ctx.save_for_backward(x, weight, bias)
        ctx.eps = float(eps)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        b, c, h, w, c_pad, block = _sizes(x, weight, bias)
        npb = triton.cdiv(h * w, block)
        gx = torch.empty_like(x)
        pw = x.new_empty((b * npb, c), dtype=torch.float32)
        pb = x.new_empty((b * npb, c), dtype=torch.float32)
        if x.numel():
            _bwd_kernel[(npb, b)](grad, x, weight.reshape(c).contiguous(), gx, pw, pb, c, h, w, npb, ctx.eps,
                                  *grad.stride(), *x.stride(), *gx.stride(), C_PAD=c_pad, BLOCK=block)
        gw = pw.sum(0).view(weight.shape).to(weight.dtype)
        gb = pb.sum(0).view(bias.shape).to(bias.dtype)
        need = ctx.needs_input_grad
        return (gx if need[0] else None), (gw if need[1] else None), (gb if need[2] else None), None


def layer_norm_2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Triton :func:`lightsr.ops.layer_norm_2d` (the result in ``x``'s memory layout)."""
    return _LayerNorm2d.apply(x, weight, bias, eps)
