"""Pixel-wise dynamic depth-wise convolution (DLGSANet's MHDLSA, Eq. 2-3 of the paper).

Every output pixel has its own K x K kernel, predicted by a small hyper-network. Kernels are
shared by groups of consecutive channels: with ``C`` channels and ``G`` kernel groups, channel
``c`` uses group ``c // (C // G)``.

    out[b, c, h, w] = sum_{i, j < K} weight[b, g(c), i*K + j, h, w] * x[b, c, h + i - K//2, w + j - K//2]

with zeros outside the image (cross-correlation, "same" padding). No bias, no normalisation of
the kernel: this is the semantics of the official CuPy kernel (``IDynamicDWConv``).

Two implementations with identical semantics:

* :func:`dynamic_dwconv_reference` - the obvious ``unfold`` formulation. It materialises a
  ``K*K``-times larger tensor (49x for K=7); kept as the oracle for tests.
* :func:`dynamic_dwconv` - the custom op ``lightsr::dynamic_dwconv``: the batch side by side on
  one zero-padded canvas, one shifted product per tap accumulated *in place* on cache-sized row
  strips (no tensor larger than the output is allocated), with a hand-written backward built the
  same way. float16/bfloat16 accumulate in float32. Pure PyTorch, any device, autograd-friendly.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from lightsr.ops import _dynamic_native
from lightsr.ops import triton as _triton
from lightsr.ops._common import acc_dtype, define_op, exporting, like as _like, memory_format_of, strip_rows

__all__ = [
    "dynamic_dwconv",
    "dynamic_dwconv_composite",
    "dynamic_dwconv_fused",
    "dynamic_dwconv_fused_reference",
    "dynamic_dwconv_reference",
]


def _check_shapes(x_shape, weight_shape, kernel_size: int) -> tuple[int, int]:
    if len(x_shape) != 4 or len(weight_shape) != 4:
        raise ValueError("dynamic_dwconv expects x (B, C, H, W) and weight (B, G*K*K, H, W)")
    b, c, h, w = x_shape
    kk = kernel_size * kernel_size
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    if weight_shape[0] != b or tuple(weight_shape[2:]) != (h, w) or weight_shape[1] % kk or not weight_shape[1]:
        raise ValueError(f"weight shape {tuple(weight_shape)} does not fit x {tuple(x_shape)} and kernel {kernel_size}")
    groups = weight_shape[1] // kk
    if c % groups:
        raise ValueError(f"{c} channels cannot be split into {groups} kernel groups")
    return groups, c // groups


def _check(x: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> tuple[int, int]:
    return _check_shapes(tuple(x.shape), tuple(weight.shape), kernel_size)


def _check_fused(x, hidden, conv_weight, conv_bias, kernel_size) -> tuple[int, int]:
    b, _, h, w = x.shape
    if hidden.dim() != 4 or hidden.shape[0] != b or hidden.shape[2:] != (h, w):
        raise ValueError(f"hidden {tuple(hidden.shape)} must be (B, C_h, H, W) with the size of x {tuple(x.shape)}")
    if conv_weight.dim() != 4 or conv_weight.shape[1:] != (hidden.shape[1], 1, 1):
        raise ValueError(f"conv_weight {tuple(conv_weight.shape)} must be a 1x1 kernel on {hidden.shape[1]} channels")
    if conv_bias is not None and conv_bias.shape != (conv_weight.shape[0],):
        raise ValueError(f"conv_bias {tuple(conv_bias.shape)} must have {conv_weight.shape[0]} values")
    return _check_shapes(tuple(x.shape), (b, conv_weight.shape[0], h, w), kernel_size)


def dynamic_dwconv_reference(x: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Reference implementation via ``F.unfold`` (memory: ``K*K`` x the input)."""
    groups, per_group = _check(x, weight, kernel_size)
    b, c, h, w = x.shape
    kk = kernel_size * kernel_size
    cols = F.unfold(x, kernel_size, padding=kernel_size // 2)  # (B, C*K*K, H*W), channel-major
    cols = cols.view(b, groups, per_group, kk, h, w)
    return (cols * weight.view(b, groups, 1, kk, h, w)).sum(dim=3).view(b, c, h, w)


def dynamic_dwconv_fused_reference(
    x: torch.Tensor, hidden: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor | None, kernel_size: int
) -> torch.Tensor:
    """Reference for the fused op: the 1x1 convolution, then :func:`dynamic_dwconv_reference`."""
    return dynamic_dwconv_reference(x, F.conv2d(hidden, conv_weight, conv_bias), kernel_size)


def dynamic_dwconv_composite(x: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Plain-aten composite (one shifted product per tap, summed out of place).

    What exporters (ONNX, ``torch.export``) record in place of the custom ops: no K*K-times
    tensor, static shapes, ops every exporter knows. Slower than :func:`dynamic_dwconv` in eager.
    """
    groups, per_group = _check(x, weight, kernel_size)
    b, c, h, w = x.shape
    k, p = kernel_size, kernel_size // 2
    xp = F.pad(x, (p, p, p, p)).reshape(b, groups, per_group, h + 2 * p, w + 2 * p)
    wt = weight.reshape(b, groups, k * k, 1, h, w)
    out = None
    for t in range(k * k):
        i, j = divmod(t, k)
        term = xp[:, :, :, i : i + h, j : j + w] * wt[:, :, t]
        out = term if out is None else out + term
    return out.reshape(b, c, h, w)


# --- fast implementation -------------------------------------------------------------------
# The batch is laid out side by side on one zero-padded "canvas" per channel,
#
#     canvas[c, row, b * (W + 2p) + col] = padded image b, channel c,
#
# so every tap is one in-place multiply-add of a shifted (C, rows, B*(W+2p) - 2p) view of the
# padded canvas and the tap's weight plane, over the whole batch at once. Rows are long even
# for small training patches (32 px wide images at batch 8 give 304-element rows instead of
# 32: 2.7x faster taps on one EPYC core), and all 1x1 products are single 2-D matrix products.
# The 2p columns between two images are computed and thrown away (their output gradient is
# zero, so they contribute nothing to any gradient). The output is built strip by strip (rows
# r0:r1) so that the accumulator and its inputs stay in the L2 cache for large images; at
# batch 1 the canvas is the padded image itself. The largest temporary is the padded canvas
# (the reference allocates K*K times the input).


def _to_canvas(t: torch.Tensor, pad_rows: int, pad_left: int, pad_right: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, C, H, W) -> zero-padded (C, H + 2 pad_rows, B * (W + pad_left + pad_right)) copy."""
    b, c, h, w = t.shape
    block = w + pad_left + pad_right
    canvas = torch.zeros(c, h + 2 * pad_rows, b, block, dtype=dtype, device=t.device)
    canvas[:, pad_rows : pad_rows + h, :, pad_left : pad_left + w] = t.permute(1, 2, 0, 3)
    return canvas.view(c, h + 2 * pad_rows, b * block)


def _from_canvas(canvas: torch.Tensor, shape, block: int, row0: int, col0: int, dtype, layout: torch.Tensor) -> torch.Tensor:
    """The (B, C, H, W) images at (row0, col0) of each ``block``-wide slot of a (C, rows, B*block)
    canvas, as a ``dtype`` tensor in the memory format of ``layout``."""
    b, c, h, w = shape
    images = canvas.reshape(c, canvas.shape[-2], b, block)[:, row0 : row0 + h, :, col0 : col0 + w]
    return images.permute(2, 0, 1, 3).to(dtype).contiguous(memory_format=memory_format_of(layout))


def _apply_strip(o, xp, wt, r0: int, r1: int, k: int) -> None:
    """o (G,Cg,R,L) = sum_t wt[:, t] * (xp shifted by tap t);  xp (G,Cg,H+2p,*), wt (G,K*K,1,R,L)."""
    if _dynamic_native.usable(o):
        return _dynamic_native.apply(o, xp[:, :, r0:], wt, k)
    w = o.shape[-1]
    for t in range(k * k):
        i, j = divmod(t, k)
        xs = xp[..., r0 + i : r1 + i, j : j + w]
        if t == 0:
            torch.mul(xs, wt[:, t], out=o)
        else:
            o.addcmul_(xs, wt[:, t])


def _scatter_strip(gp, gs, wt, r0: int, r1: int, k: int) -> None:
    """Adjoint of :func:`_apply_strip` w.r.t. x: gp (padded) += wt[:, t] * gs at tap t's shift."""
    if _dynamic_native.usable(gp):
        return _dynamic_native.grad_input(gp[:, :, r0 : r1 + k - 1], gs, wt, k)
    w = gs.shape[-1]
    for t in range(k * k):
        i, j = divmod(t, k)
        gp[..., r0 + i : r1 + i, j : j + w].addcmul_(gs, wt[:, t])


def _weight_grad_strip(gw, gs, xp, r0: int, r1: int, k: int) -> None:
    """gw (G,K*K,R,L)[:, t] = sum over the group's channels of gs (G,Cg,R,L) * (xp shifted by tap t).

    One multiply-add per channel of the group into the tap's plane (no product temporary; 1.3x
    faster than a product followed by a sum over the channels at batch 8 x 32 x 32)."""
    if _dynamic_native.usable(gw):
        return _dynamic_native.weight_grad(gw, xp[:, :, r0:], gs, k)
    w = gs.shape[-1]
    for t in range(k * k):
        i, j = divmod(t, k)
        xs, out = xp[..., r0 + i : r1 + i, j : j + w], gw[:, t]
        torch.mul(gs[:, 0], xs[:, 0], out=out)
        for c in range(1, gs.shape[1]):
            out.addcmul_(gs[:, c], xs[:, c])


class _Canvas:
    """Geometry of the side-by-side layout for ``x`` (B, C, H, W) and a K x K kernel."""

    def __init__(self, x: torch.Tensor, kernel_size: int, groups: int, extra_row_elements: int = 0):
        self.b, self.c, self.h, self.w = x.shape
        self.k, self.p = kernel_size, kernel_size // 2
        self.groups, self.per_group = groups, self.c // groups
        self.block = self.w + 2 * self.p
        self.width = self.b * self.block  # canvas width
        self.valid = self.width - 2 * self.p  # columns computed: the last image's right padding is not
        self.acc = acc_dtype(x.dtype)
        self.rows = strip_rows(x, self.h, max(self.c, extra_row_elements) * self.width)

    def strips(self):
        for r0 in range(0, self.h, self.rows):
            yield r0, min(self.h, r0 + self.rows)

    def padded(self, x: torch.Tensor) -> torch.Tensor:
        """x zero-padded by p on all sides: (G, C/G, H + 2p, width)."""
        p = self.p
        return _to_canvas(x, p, p, p, self.acc).view(self.groups, self.per_group, self.h + 2 * p, self.width)

    def plain(self, t: torch.Tensor) -> torch.Tensor:
        """t (B, C', H, W) on the canvas without row padding, zeros between images: (C', H, width)."""
        return _to_canvas(t, 0, 0, 2 * self.p, self.acc)

    def taps(self, wc: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        """Rows r0:r1 of a (G*K*K, R, width) kernel canvas as the (G, K*K, 1, R, valid) tap planes."""
        kk = self.k * self.k
        return wc.view(self.groups, kk, 1, r1 - r0, self.width)[..., : self.valid]


def _forward_impl(x: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    groups, _ = _check(x, weight, kernel_size)
    cv = _Canvas(x, kernel_size, groups)
    xp = cv.padded(x)
    wc = cv.plain(weight)  # (G*K*K, H, width)
    out = torch.empty(groups, cv.per_group, cv.h, cv.width, dtype=cv.acc, device=x.device)
    for r0, r1 in cv.strips():
        _apply_strip(out[..., r0:r1, : cv.valid], xp, cv.taps(wc[:, r0:r1], r0, r1), r0, r1, cv.k)
    return _from_canvas(out.view(cv.c, cv.h, cv.width), x.shape, cv.block, 0, 0, x.dtype, x)


def _grad_input_impl(grad: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """d out / d x: every output scatters ``w_t * grad`` back to the pixel tap ``t`` read."""
    groups, _ = _check(grad, weight, kernel_size)
    cv = _Canvas(grad, kernel_size, groups)
    p = cv.p
    gc = cv.plain(grad).view(groups, cv.per_group, cv.h, cv.width)
    wc = cv.plain(weight)
    gp = torch.zeros(groups, cv.per_group, cv.h + 2 * p, cv.width, dtype=cv.acc, device=grad.device)
    for r0, r1 in cv.strips():
        _scatter_strip(gp, gc[..., r0:r1, : cv.valid], cv.taps(wc[:, r0:r1], r0, r1), r0, r1, cv.k)
    # in the memory format of the weight, which is x's (``grad`` may be an expanded tensor, e.g. of a sum)
    return _from_canvas(gp.view(cv.c, cv.h + 2 * p, cv.width), grad.shape, cv.block, p, p, grad.dtype, weight)


def _grad_weight_impl(grad: torch.Tensor, x: torch.Tensor, kernel_size: int, groups: int) -> torch.Tensor:
    """d out / d weight[g, t]: the sum over the group's channels of grad * (x shifted by tap t)."""
    cv = _Canvas(x, kernel_size, groups)
    kk = cv.k * cv.k
    xp = cv.padded(x)
    gc = cv.plain(grad).view(groups, cv.per_group, cv.h, cv.width)
    gw = torch.empty(groups, kk, cv.h, cv.width, dtype=cv.acc, device=x.device)
    for r0, r1 in cv.strips():
        _weight_grad_strip(gw[..., r0:r1, : cv.valid], gc[..., r0:r1, : cv.valid], xp, r0, r1, cv.k)
    b, _, h, w = x.shape
    return _from_canvas(gw.view(groups * kk, h, cv.width), (b, groups * kk, h, w), cv.block, 0, 0, x.dtype, x)


def _fwd_fake(x, weight, kernel_size):
    _check(x, weight, kernel_size)
    return _like(x)


def _gin_fake(grad, weight, kernel_size):
    return torch.empty(grad.shape, dtype=grad.dtype, device=grad.device, memory_format=memory_format_of(weight))


def _gw_fake(grad, x, kernel_size, groups):
    b, _, h, w = x.shape
    shape = (b, groups * kernel_size * kernel_size, h, w)
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))


_grad_input_op = define_op("dynamic_dwconv_grad_input", _grad_input_impl, _gin_fake)
_grad_weight_op = define_op("dynamic_dwconv_grad_weight", _grad_weight_impl, _gw_fake)


def _setup_context(ctx, inputs, output):
    x, weight, kernel_size = inputs
    ctx.save_for_backward(x, weight)
    ctx.kernel_size = kernel_size


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    k = ctx.kernel_size
    grad_x = _grad_input_op(grad, weight, k) if ctx.needs_input_grad[0] else None
    grad_w = _grad_weight_op(grad, x, k, weight.shape[1] // (k * k)) if ctx.needs_input_grad[1] else None
    return grad_x, grad_w, None


_dynamic_dwconv_op = define_op("dynamic_dwconv", _forward_impl, _fwd_fake, _setup_context, _backward)


def dynamic_dwconv(x: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Fast implementation (custom op ``lightsr::dynamic_dwconv``): in-place tap accumulation on
    cache-sized row strips, hand-written backward. Same semantics as the reference.

    While an exporter traces the model (ONNX, ``torch.export``) :func:`dynamic_dwconv_composite` is used.
    """
    if exporting():
        return dynamic_dwconv_composite(x, weight, int(kernel_size))
    if _triton.wants(x, weight):  # CUDA: one Triton kernel per pass
        return _triton.dynamic_dwconv(x, weight, int(kernel_size))
    return _dynamic_dwconv_op(x, weight, int(kernel_size))


# --- fused with the kernel-generating 1x1 convolution -----------------------------------------
# DLGSANet predicts the per-pixel kernels with a 1x1 convolution (C/4 -> G*K*K channels: 392
# for C = 48), a tensor 8x larger than the features (90 MB at 320x180 in float32). Making it,
# converting its layout in channels-last pipelines and reading it back dominated the layer.
# The fused op computes the kernels strip by strip right before they are used (one matrix
# product on the canvas) and never materialises them - neither in the forward nor in the
# backward, which recomputes them.


def _kernel_strip(hc, wk, conv_bias, r0: int, r1: int, width: int) -> torch.Tensor:
    """The 1x1 convolution on rows r0:r1 of the (C_h, H * width) hidden canvas: (G*K*K, R * width),
    in the canvas' dtype (also under autocast)."""
    hs = hc[:, r0 * width : r1 * width]
    with torch.autocast(hc.device.type, enabled=False) if hc.device.type in ("cpu", "cuda") else contextlib.nullcontext():
        if conv_bias is None:
            return torch.mm(wk, hs)
        return torch.addmm(conv_bias.view(-1, 1), wk, hs)


def _fused_setup(x, hidden, conv_weight, conv_bias, kernel_size):
    groups, _ = _check_fused(x, hidden, conv_weight, conv_bias, kernel_size)
    cv = _Canvas(x, kernel_size, groups, extra_row_elements=conv_weight.shape[0] // 4)
    hc = cv.plain(hidden).view(hidden.shape[1], -1)  # (C_h, H * width)
    wk = conv_weight.to(cv.acc).reshape(conv_weight.shape[0], -1)
    bias = conv_bias.to(cv.acc) if conv_bias is not None else None
    return cv, cv.padded(x), hc, wk, bias


def _fused_forward_impl(
    x: torch.Tensor, hidden: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor | None, kernel_size: int
) -> torch.Tensor:
    if _dynamic_native.usable_channels_last(x, hidden):
        groups, _ = _check_fused(x, hidden, conv_weight, conv_bias, kernel_size)
        return _dynamic_native.fused_forward_channels_last(x, hidden, conv_weight, conv_bias, kernel_size, groups)
    cv, xp, hc, wk, bias = _fused_setup(x, hidden, conv_weight, conv_bias, kernel_size)
    out = torch.empty(cv.groups, cv.per_group, cv.h, cv.width, dtype=cv.acc, device=x.device)
    for r0, r1 in cv.strips():
        wt = cv.taps(_kernel_strip(hc, wk, bias, r0, r1, cv.width), r0, r1)
        _apply_strip(out[..., r0:r1, : cv.valid], xp, wt, r0, r1, cv.k)
    return _from_canvas(out.view(cv.c, cv.h, cv.width), x.shape, cv.block, 0, 0, x.dtype, x)


def _fused_backward_impl(
    grad: torch.Tensor,
    x: torch.Tensor,
    hidden: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    kernel_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients w.r.t. (x, hidden, conv_weight, conv_bias); conv_bias' is empty when there is none."""
    if _dynamic_native.usable_channels_last(x, hidden):
        groups, _ = _check_fused(x, hidden, conv_weight, conv_bias, kernel_size)
        return _dynamic_native.fused_backward_channels_last(grad, x, hidden, conv_weight, conv_bias, kernel_size, groups)
    cv, xp, hc, wk, bias = _fused_setup(x, hidden, conv_weight, conv_bias, kernel_size)
    p, width, valid = cv.p, cv.width, cv.valid
    nk, ch = wk.shape
    gc = cv.plain(grad).view(cv.groups, cv.per_group, cv.h, width)  # zero between the images
    gp = torch.zeros(cv.groups, cv.per_group, cv.h + 2 * p, width, dtype=cv.acc, device=x.device)
    g_hc = torch.empty(ch, cv.h * width, dtype=cv.acc, device=x.device)
    g_cw = torch.zeros(nk, ch, dtype=cv.acc, device=x.device)
    g_cb = torch.zeros(nk if conv_bias is not None else 0, dtype=cv.acc, device=x.device)
    for r0, r1 in cv.strips():
        cols = slice(r0 * width, r1 * width)
        wt = cv.taps(_kernel_strip(hc, wk, bias, r0, r1, width), r0, r1)
        gs = gc[..., r0:r1, :valid]
        _scatter_strip(gp, gs, wt, r0, r1, cv.k)
        gw = torch.empty(nk, r1 - r0, width, dtype=cv.acc, device=x.device)
        gw[..., valid:] = 0  # the last image's right padding: no output there
        _weight_grad_strip(gw.view(cv.groups, -1, r1 - r0, width)[..., :valid], gs, xp, r0, r1, cv.k)
        gw = gw.view(nk, -1)
        g_hc[:, cols] = wk.t() @ gw
        g_cw.addmm_(gw, hc[:, cols].t())
        if conv_bias is not None:
            g_cb += gw.sum(dim=1)
    grad_x = _from_canvas(gp.view(cv.c, cv.h + 2 * p, width), x.shape, cv.block, p, p, x.dtype, x)
    g_hidden = _from_canvas(g_hc.view(ch, cv.h, width), hidden.shape, cv.block, 0, 0, hidden.dtype, hidden)
    return grad_x, g_hidden, g_cw.view_as(conv_weight).to(conv_weight.dtype), g_cb.to(conv_weight.dtype)


def _fused_fwd_fake(x, hidden, conv_weight, conv_bias, kernel_size):
    _check_fused(x, hidden, conv_weight, conv_bias, kernel_size)
    return _like(x)


def _fused_bwd_fake(grad, x, hidden, conv_weight, conv_bias, kernel_size):
    nb = conv_weight.shape[0] if conv_bias is not None else 0
    return _like(x), _like(hidden), conv_weight.new_empty(conv_weight.shape), conv_weight.new_empty(nb)


_fused_backward_op = define_op("dynamic_dwconv_fused_backward", _fused_backward_impl, _fused_bwd_fake)


def _fused_setup_context(ctx, inputs, output):
    x, hidden, conv_weight, conv_bias, kernel_size = inputs
    ctx.save_for_backward(x, hidden, conv_weight, conv_bias)
    ctx.kernel_size = kernel_size


def _fused_backward(ctx, grad):
    x, hidden, conv_weight, conv_bias = ctx.saved_tensors
    gx, gh, gcw, gcb = _fused_backward_op(grad, x, hidden, conv_weight, conv_bias, ctx.kernel_size)
    need = ctx.needs_input_grad
    return (
        gx if need[0] else None,
        gh if need[1] else None,
        gcw if need[2] else None,
        gcb if (conv_bias is not None and need[3]) else None,
        None,
    )


_dynamic_dwconv_fused_op = define_op(
    "dynamic_dwconv_fused", _fused_forward_impl, _fused_fwd_fake, _fused_setup_context, _fused_backward
)


def dynamic_dwconv_fused(
    x: torch.Tensor, hidden: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor | None, kernel_size: int
) -> torch.Tensor:
    """``dynamic_dwconv(x, conv2d(hidden, conv_weight, conv_bias), kernel_size)`` without ever
    materialising the per-pixel kernels (custom op ``lightsr::dynamic_dwconv_fused``).

    ``conv_weight`` is a 1x1 kernel ``(G*K*K, C_h, 1, 1)``: DLGSANet's ``conv2.0``. While an
    exporter traces the model the 1x1 convolution and :func:`dynamic_dwconv_composite` are used.
    """
    if exporting():
        return dynamic_dwconv_composite(x, F.conv2d(hidden, conv_weight, conv_bias), int(kernel_size))
    if _triton.wants(x, hidden, conv_weight, conv_bias):  # CUDA: kernels generated in registers
        return _triton.dynamic_dwconv_fused(x, hidden, conv_weight, conv_bias, int(kernel_size))
    return _dynamic_dwconv_fused_op(x, hidden, conv_weight, conv_bias, int(kernel_size))
