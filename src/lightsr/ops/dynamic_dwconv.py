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
* :func:`dynamic_dwconv` - the custom op ``lightsr::dynamic_dwconv``: accumulates one shifted
  product per tap *in place* on cache-sized row strips (no tensor larger than the output is
  allocated), with a hand-written backward built the same way. float16/bfloat16 accumulate in
  float32. Pure PyTorch, any device, autograd-friendly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

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
# x is padded once; the output is built strip by strip (rows r0:r1) with one in-place
# multiply-add of a shifted view of the padded input and the tap's weight plane per tap. The
# largest temporary is the padded input (the reference allocates K*K times the input).


def _pad_groups(x: torch.Tensor, groups: int, p: int) -> torch.Tensor:
    """Zero-padded NCHW copy in the accumulation dtype, viewed as (B, G, C/G, H + 2p, W + 2p)."""
    b, c, h, w = x.shape
    xp = F.pad(x.to(acc_dtype(x.dtype)).contiguous(), (p, p, p, p))
    return xp.view(b, groups, c // groups, h + 2 * p, w + 2 * p)


def _apply_strip(o, xp, wt, r0: int, r1: int, k: int) -> None:
    """o[rows r0:r1] = sum_t wt[t] * (xp shifted by tap t);  o (B,G,Cg,R,W), wt (B,G,K*K,1,R,W)."""
    w = o.shape[-1]
    for t in range(k * k):
        i, j = divmod(t, k)
        xs = xp[..., r0 + i : r1 + i, j : j + w]
        if t == 0:
            torch.mul(xs, wt[:, :, t], out=o)
        else:
            o.addcmul_(xs, wt[:, :, t])


def _scatter_strip(gp, gs, wt, r0: int, r1: int, k: int) -> None:
    """Adjoint of :func:`_apply_strip` w.r.t. x: gp (padded) += wt[t] * gs at tap t's shift."""
    w = gs.shape[-1]
    for t in range(k * k):
        i, j = divmod(t, k)
        gp[..., r0 + i : r1 + i, j : j + w].addcmul_(gs, wt[:, :, t])


def _weight_grad_strip(gw, gs, xp, r0: int, r1: int, k: int, tmp) -> None:
    """gw (B,G,K*K,R,W)[t] = sum over the group's channels of gs * (xp shifted by tap t)."""
    w = gs.shape[-1]
    for t in range(k * k):
        i, j = divmod(t, k)
        torch.mul(gs, xp[..., r0 + i : r1 + i, j : j + w], out=tmp)
        torch.sum(tmp, dim=2, out=gw[:, :, t])


def _forward_impl(x: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    groups, per_group = _check(x, weight, kernel_size)
    b, c, h, w = x.shape
    k = kernel_size
    xp = _pad_groups(x, groups, k // 2)
    wt = weight.to(xp.dtype).contiguous().view(b, groups, k * k, 1, h, w)
    out = torch.empty(b, groups, per_group, h, w, dtype=xp.dtype, device=x.device)
    rows = strip_rows(x, h, b * c * w)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        _apply_strip(out[..., r0:r1, :], xp, wt[..., r0:r1, :], r0, r1, k)
    return out.view(b, c, h, w).to(x.dtype).contiguous(memory_format=memory_format_of(x))


def _grad_input_impl(grad: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """d out / d x: every output scatters ``w_t * grad`` back to the pixel tap ``t`` read."""
    b, c, h, w = grad.shape
    k, p = kernel_size, kernel_size // 2
    groups, per_group = _check(grad, weight, k)
    acc = acc_dtype(grad.dtype)
    gp = torch.zeros(b, groups, per_group, h + 2 * p, w + 2 * p, dtype=acc, device=grad.device)
    g = grad.to(acc).contiguous().view(b, groups, per_group, h, w)
    wt = weight.to(acc).contiguous().view(b, groups, k * k, 1, h, w)
    rows = strip_rows(grad, h, b * c * w)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        _scatter_strip(gp, g[..., r0:r1, :], wt[..., r0:r1, :], r0, r1, k)
    return gp[..., p : p + h, p : p + w].reshape(b, c, h, w).to(grad.dtype)


def _grad_weight_impl(grad: torch.Tensor, x: torch.Tensor, kernel_size: int, groups: int) -> torch.Tensor:
    """d out / d weight[g, t]: the sum over the group's channels of grad * (x shifted by tap t)."""
    b, c, h, w = x.shape
    k = kernel_size
    per_group = c // groups
    acc = acc_dtype(x.dtype)
    xp = _pad_groups(x, groups, k // 2)
    g = grad.to(acc).contiguous().view(b, groups, per_group, h, w)
    gw = torch.empty(b, groups, k * k, h, w, dtype=acc, device=x.device)
    rows = strip_rows(x, h, b * c * w)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        tmp = torch.empty(b, groups, per_group, r1 - r0, w, dtype=acc, device=x.device)
        _weight_grad_strip(gw[..., r0:r1, :], g[..., r0:r1, :], xp, r0, r1, k, tmp)
    return gw.view(b, groups * k * k, h, w).to(x.dtype)


def _fwd_fake(x, weight, kernel_size):
    _check(x, weight, kernel_size)
    return _like(x)


def _gin_fake(grad, weight, kernel_size):
    return grad.new_empty(grad.shape)


def _gw_fake(grad, x, kernel_size, groups):
    b, _, h, w = x.shape
    return x.new_empty(b, groups * kernel_size * kernel_size, h, w)


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
    return _dynamic_dwconv_op(x, weight, int(kernel_size))


# --- fused with the kernel-generating 1x1 convolution -----------------------------------------
# DLGSANet predicts the per-pixel kernels with a 1x1 convolution (C/4 -> G*K*K channels: 392
# for C = 48), a tensor 8x larger than the features (90 MB at 320x180 in float32). Making it,
# converting its layout in channels-last pipelines and reading it back dominated the layer.
# The fused op computes the kernels strip by strip right before they are used and never
# materialises them - neither in the forward nor in the backward, which recomputes them.


def _kernel_strip(hidden, conv_weight, conv_bias, r0: int, r1: int) -> torch.Tensor:
    """The 1x1 convolution on rows r0:r1 of ``hidden`` (contiguous): (B, G*K*K, (r1-r0)*W)."""
    b, ch, _, w = hidden.shape
    nk = conv_weight.shape[0]
    hs = hidden[:, :, r0:r1, :].reshape(b, ch, (r1 - r0) * w)
    wk = conv_weight.reshape(nk, ch)
    if b == 1:
        if conv_bias is None:
            return torch.mm(wk, hs[0]).unsqueeze(0)
        return torch.addmm(conv_bias.view(nk, 1), wk, hs[0]).unsqueeze(0)
    out = torch.bmm(wk.expand(b, nk, ch), hs)
    if conv_bias is not None:
        out += conv_bias.view(1, nk, 1)
    return out


def _fused_rows(x: torch.Tensor, n_kernel_channels: int) -> int:
    b, c, h, w = x.shape
    return strip_rows(x, h, b * max(c, n_kernel_channels // 4) * w)


def _fused_forward_impl(
    x: torch.Tensor, hidden: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor | None, kernel_size: int
) -> torch.Tensor:
    groups, per_group = _check_fused(x, hidden, conv_weight, conv_bias, kernel_size)
    b, c, h, w = x.shape
    k = kernel_size
    acc = acc_dtype(x.dtype)
    xp = _pad_groups(x, groups, k // 2)
    hidden = hidden.to(acc).contiguous()
    conv_weight = conv_weight.to(acc)
    conv_bias = conv_bias.to(acc) if conv_bias is not None else None
    out = torch.empty(b, groups, per_group, h, w, dtype=acc, device=x.device)
    rows = _fused_rows(x, conv_weight.shape[0])
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        wt = _kernel_strip(hidden, conv_weight, conv_bias, r0, r1).view(b, groups, k * k, 1, r1 - r0, w)
        _apply_strip(out[..., r0:r1, :], xp, wt, r0, r1, k)
    return out.view(b, c, h, w).to(x.dtype).contiguous(memory_format=memory_format_of(x))


def _fused_backward_impl(
    grad: torch.Tensor,
    x: torch.Tensor,
    hidden: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    kernel_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients w.r.t. (x, hidden, conv_weight, conv_bias); conv_bias' is empty when there is none."""
    groups, per_group = _check_fused(x, hidden, conv_weight, conv_bias, kernel_size)
    b, c, h, w = x.shape
    k, p = kernel_size, kernel_size // 2
    nk, ch = conv_weight.shape[0], hidden.shape[1]
    acc = acc_dtype(x.dtype)
    out_dtype, hidden_dtype, param_dtype = x.dtype, hidden.dtype, conv_weight.dtype
    xp = _pad_groups(x, groups, p)
    hidden = hidden.to(acc).contiguous()
    conv_weight = conv_weight.to(acc)
    conv_bias = conv_bias.to(acc) if conv_bias is not None else None
    g = grad.to(acc).contiguous().view(b, groups, per_group, h, w)
    wk = conv_weight.reshape(nk, ch)
    gp = torch.zeros(b, groups, per_group, h + 2 * p, w + 2 * p, dtype=acc, device=x.device)
    g_hidden = torch.empty(b, ch, h, w, dtype=acc, device=x.device)
    g_cw = torch.zeros(nk, ch, dtype=acc, device=x.device)
    g_cb = torch.zeros(nk if conv_bias is not None else 0, dtype=acc, device=x.device)
    rows = _fused_rows(x, nk)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        n = (r1 - r0) * w
        wt = _kernel_strip(hidden, conv_weight, conv_bias, r0, r1).view(b, groups, k * k, 1, r1 - r0, w)
        gs = g[..., r0:r1, :]
        _scatter_strip(gp, gs, wt, r0, r1, k)
        gw = torch.empty(b, groups, k * k, r1 - r0, w, dtype=acc, device=x.device)
        tmp = torch.empty(b, groups, per_group, r1 - r0, w, dtype=acc, device=x.device)
        _weight_grad_strip(gw, gs, xp, r0, r1, k, tmp)
        gw = gw.view(b, nk, n)
        hs = hidden[:, :, r0:r1, :].reshape(b, ch, n)
        g_hidden[:, :, r0:r1, :] = torch.matmul(wk.t(), gw).view(b, ch, r1 - r0, w)
        g_cw += torch.matmul(gw, hs.transpose(1, 2)).sum(0)
        if conv_bias is not None:
            g_cb += gw.sum(dim=(0, 2))
    grad_x = gp[..., p : p + h, p : p + w].reshape(b, c, h, w).to(out_dtype)
    return grad_x, g_hidden.to(hidden_dtype), g_cw.view_as(conv_weight).to(param_dtype), g_cb.to(param_dtype)


def _fused_fwd_fake(x, hidden, conv_weight, conv_bias, kernel_size):
    _check_fused(x, hidden, conv_weight, conv_bias, kernel_size)
    return _like(x)


def _fused_bwd_fake(grad, x, hidden, conv_weight, conv_bias, kernel_size):
    nb = conv_weight.shape[0] if conv_bias is not None else 0
    return x.new_empty(x.shape), hidden.new_empty(hidden.shape), conv_weight.new_empty(conv_weight.shape), conv_weight.new_empty(nb)


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
    return _dynamic_dwconv_fused_op(x, hidden, conv_weight, conv_bias, int(kernel_size))
