"""1x1 (point-wise) convolutions as matrix products on channels-last tensors.

Most of every model's multiply-adds are 1x1 convolutions (projections, FFN in/out, q/k/v). On a
channels-last CPU tensor a 1x1 convolution *is* a matrix product of the (pixels, C_in) view with
the (C_in, C_out) weight, with no copy on either side. aten's convolution does not always see it:
with one thread and batch 1 it takes the ``_slow_conv2d`` (im2col) path, and its backward goes
through oneDNN's convolution backward. :func:`pointwise_conv` calls the BLAS product (``F.linear``,
``torch.addmm``) directly, forward and backward, and can add a residual in the same product
(``residual + scale * conv(x)``: the product accumulates onto the residual, one pass less).

* :func:`pointwise_conv_reference` - ``residual + scale * F.conv2d(x, w, b)`` (the test oracle).
* :func:`pointwise_conv` - the product on CPU tensors with unit channel stride, in plain eager
  execution; elsewhere (GPUs, NCHW, while the MAC counter or an exporter looks) the reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lightsr.ops import _elementwise_native
from lightsr.ops._common import exporting, needs_grad, observed

__all__ = ["pointwise_conv", "pointwise_conv_reference"]


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[2:] != (1, 1) or weight.shape[1] != x.shape[1]:
        raise ValueError(f"a 1x1 convolution expects x (B, C, H, W) and weight (C_out, C, 1, 1); got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")


def pointwise_conv_reference(x, weight, bias=None, residual=None, scale=None, out=None) -> torch.Tensor:
    """``residual + scale * conv1x1(x)`` (``residual`` / ``scale`` optional; ``scale`` broadcasts
    like (1, C_out, 1, 1)); with ``out`` the result is copied into it and ``out`` returned."""
    _check(x, weight)
    y = F.conv2d(x, weight, bias)
    if scale is not None:
        y = y * scale.reshape(1, -1, 1, 1)
    y = y if residual is None else residual + y
    return y if out is None else out.copy_(y)


def _eligible(x: torch.Tensor, *others) -> bool:
    if x.device.type != "cpu" or (x.shape[1] > 1 and x.stride(1) != 1) or exporting():
        return False
    if observed():
        return False
    return all(t is None or type(t) in (torch.Tensor, torch.nn.Parameter) for t in (x, *others))


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) channels-last -> the (B*H*W, C) view (a copy only for non-dense layouts)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _as_image(rows: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    return rows.view(b, h, w, -1).permute(0, 3, 1, 2)


_ONEDNN = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
_ONEDNN_FAILED: set = set()  # dtypes for which oneDNN refused the product once: F.linear from then on


def _linear(rows: torch.Tensor, wm: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(rows, wm, bias)`` of a (pixels, C_in) matrix; at inference by oneDNN's inner
    product (``mkldnn::_linear_pointwise``, what inductor's CPU fusions call) where torch has it:
    4-31% faster than MKL's GEMM for the models' 16-192-channel products in float32 and bfloat16 on a
    Zen 4 EPYC, 0-10% of a whole model (``python benchmarks/ops_speed.py --threads 1 --products``).
    Under autocast both run in its dtype."""
    pd = _product_dtype(rows)
    if (_ONEDNN is None or pd in _ONEDNN_FAILED or needs_grad(rows, wm, bias)
            or pd not in (torch.float32, torch.bfloat16) or rows.dtype not in (torch.float32, torch.bfloat16)):
        return F.linear(rows, wm, bias)
    try:
        with torch.autocast("cpu", enabled=False):
            return _ONEDNN(rows.to(pd), wm.to(pd).contiguous(), None if bias is None else bias.to(pd), "none", [], "")
    except RuntimeError:  # e.g. oneDNN's bf16 path needs AVX-512 (torch refuses it on an AVX2-only CPU)
        _ONEDNN_FAILED.add(pd)
        return F.linear(rows, wm, bias)


class _OneDnnProduct(torch.autograd.Function):
    """``residual + rows @ wm.T + bias`` for float32 training by oneDNN's inner product: the forward
    (the residual as its ``add`` post-op) and the input gradient ``g @ wm``; the weight gradient
    ``g.T @ rows`` (a long reduction, where MKL's GEMM is as fast) and the bias' by the native
    column sum (aten's ``sum(0)`` without the library)."""

    @staticmethod
    def forward(ctx, rows, wm, bias, residual):
        ctx.save_for_backward(rows, wm)
        ctx.has_bias = bias is not None
        wm, bias = wm.detach().contiguous(), None if bias is None else bias.detach()
        if residual is None:
            return _ONEDNN(rows.detach(), wm, bias, "none", [], "")
        return _ONEDNN.binary(rows.detach(), residual.detach(), wm, bias, "add")

    @staticmethod
    def backward(ctx, g):
        rows, wm = ctx.saved_tensors
        need = ctx.needs_input_grad
        g = g.contiguous()
        g_rows = _ONEDNN(g, wm.t().contiguous(), None, "none", [], "") if need[0] else None
        g_wm = g.t().mm(rows) if need[1] else None
        g_bias = _bias_grad(g) if ctx.has_bias and need[2] else None
        return g_rows, g_wm, g_bias, g if need[3] else None


def _bias_grad(g: torch.Tensor) -> torch.Tensor:
    """``g.sum(0)``: the native column sum where it applies (1.5x aten's on a (36864, 128) gradient:
    ``python benchmarks/ops_speed.py --threads 1 --backward --only column``)."""
    s = _elementwise_native.column_sum(g)
    return g.sum(0) if s is None else s


def _trained_product(rows, wm, bias, residual_rows):
    """``residual_rows + F.linear(rows, wm, bias)`` with autograd by :class:`_OneDnnProduct`, or None
    where it does not apply (the caller takes BLAS): float32 CPU tensors outside autocast."""
    if (_ONEDNN is None or torch.float32 in _ONEDNN_FAILED or torch.is_autocast_enabled("cpu")
            or any(t is not None and t.dtype != torch.float32 for t in (rows, wm, bias, residual_rows))):
        return None
    if residual_rows is not None and not residual_rows.is_contiguous():
        return None
    return _OneDnnProduct.apply(rows, wm, bias, residual_rows)


def _product_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the product runs in: the CPU autocast dtype where autocast is on, else x's."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype


def _scaled(weight, bias, scale):
    """The (C_out, C_in) weight matrix and bias with ``scale`` folded in."""
    wm = weight.reshape(weight.shape[0], -1)
    if scale is not None:
        s = scale.reshape(-1)
        wm = wm * s[:, None]
        bias = None if bias is None else bias * s
    return wm, bias


def pointwise_conv(x, weight, bias=None, residual=None, scale=None, out=None) -> torch.Tensor:
    """The reference's result; a matrix product on channels-last CPU tensors (the output is
    channels-last). Under autocast the product runs in the autocast dtype, as a convolution would.

    ``out``: a tensor of the result's shape to write it into (a band of rows of a larger
    channels-last image, say, or ``residual`` itself); at inference the product writes there
    directly where its rows are one dense block (accumulating in place when ``out`` is the
    residual), else the result is added or copied in. Returns ``out``."""
    if out is not None:
        return _into(out, x, weight, bias, residual, scale)
    _check(x, weight)
    if not _eligible(x, weight, bias, residual, scale):
        return pointwise_conv_reference(x, weight, bias, residual, scale)
    b, _, h, w = x.shape
    wm, bias = _scaled(weight, bias, scale)
    fuse = residual is not None and (residual.shape[1] == 1 or residual.stride(1) == 1)
    if needs_grad(x, wm, bias, residual):
        y = _trained_product(_rows(x), wm, bias, _rows(residual) if fuse else None)
        if y is not None:
            y = _as_image(y, b, h, w)
            return y if fuse or residual is None else residual + y
    if not fuse or torch.is_autocast_enabled("cpu"):
        # under autocast the product runs in bf16 and the residual stream keeps its dtype (as with a
        # conv); the (pixels, C_in) rows as one matrix: a 4-D input whose batch stride is not the
        # image's (a band of rows) would make matmul run a batched product with a copied weight
        y = _as_image(_linear(_rows(x), wm, bias), b, h, w)
        return y if residual is None else residual + y
    if not needs_grad(x, wm, bias, residual):  # oneDNN's product, then the residual added in place
        return _as_image(_linear(_rows(x), wm, bias).add_(_rows(residual)), b, h, w)
    out = torch.addmm(_rows(residual), _rows(x), wm.t())
    if bias is not None:
        out.add_(bias)  # addmm's backward does not need its output
    return _as_image(out, b, h, w)


def _dense_rows(t: torch.Tensor) -> bool:
    """The (B*H*W, C) rows of ``t`` are one dense block (a view, no copy: writable in place)."""
    b, c, h, w = t.shape
    return t.stride(1) == 1 and t.stride(3) == c and t.stride(2) == w * c and (b == 1 or t.stride(0) == h * w * c)


def _same(a: torch.Tensor | None, b: torch.Tensor) -> bool:
    """``a`` and ``b`` are the same elements (one tensor, or two equal views of it)."""
    return (a is not None and a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
            and a.dtype == b.dtype)


def _into(out, x, weight, bias, residual, scale) -> torch.Tensor:
    """``out[...] = residual + scale * conv1x1(x)``: the product (oneDNN's, with the bias), then the
    residual added into out's rows where they are dense; ``out`` may be ``residual`` itself (added in
    place: no copy of the residual). MKL's ``addmm_`` accumulating onto the residual, then the bias,
    took 0.98-1.58x the time of the product and the add at the models' shapes (the full DLGSANet's 90
    channels: 1.10-1.58x, float32 and bfloat16; Zen 4 EPYC,
    ``python benchmarks/ops_speed.py --threads 1 --products``).
    Under CPU autocast the product runs in the autocast dtype, and is added in that dtype when ``out``
    and ``residual`` have it too, else onto the (float32) residual in one mixed-dtype pass."""
    pd = _product_dtype(x)
    usable = (residual is not None and _dense_rows(out) and not needs_grad(x, weight, bias, residual, scale)
              and _eligible(x, weight, bias, residual, scale, out))
    if not usable:
        out.copy_(pointwise_conv(x, weight, bias, residual, scale))
        return out
    _check(x, weight)
    if not (out.dtype == residual.dtype == pd):  # a bf16 product onto a float32 residual stream
        y = pointwise_conv(x, weight, bias, None, scale)
        if _elementwise_native.add_bf16_into_f32(residual, y, out) is not None:
            return out
        return out.add_(y) if _same(residual, out) else torch.add(residual, y, out=out)
    wm, bias = _scaled(weight, bias, scale)
    with torch.autocast("cpu", enabled=False):
        y = _linear(_rows(x).to(pd), wm.to(pd), None if bias is None else bias.to(pd))
        if _same(residual, out):
            _rows(out).add_(y)
        else:
            torch.add(_rows(residual), y, out=_rows(out))
    return out
