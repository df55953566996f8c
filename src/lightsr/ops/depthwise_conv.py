"""Static depth-wise convolution with a faster backward for 1 x K kernels (LAMNet's LSAM).

LAMNet predicts each focal-attention kernel with a depth-wise ``1 x 23`` (horizontal) or
``23 x 1`` (vertical) convolution. On CPU in the channels-last layout, oneDNN computes the
*weight gradient* of the ``1 x K`` case several times slower than that of the ``K x 1`` case
(forward + backward of 16 x 32 x 48 x 48 with ``F.conv2d``: 46 ms vs 6.5 ms in
``benchmarks/ops_speed.py --backward``, docs/speed.md), while the forward and the input
gradient are fast for both. Transposing height and width turns one into the other:

    dL/dw[c, 0, k] (1 x K, on x, g)  =  dL/dw[c, k, 0] (K x 1, on x^T, g^T)

* :func:`depthwise_conv2d_reference` - ``F.conv2d(..., groups=C)``: the test oracle.
* :func:`depthwise_conv2d` - the same forward; the backward asks aten for the input gradient
  alone, computes the weight gradient of a ``1 x K`` kernel on CPU channels-last tensors through
  the transposed ``K x 1`` problem (two transposing copies of the size of the input), and the
  bias gradient as a plain sum. Everything else (other kernels, other layouts, GPUs) uses aten's
  own weight gradient.

Both share one forward convolution (``_conv``), which runs a 1 x K kernel that would be computed
in bfloat16/float16 on the CPU in float32: oneDNN's bfloat16 1 x 23 depth-wise convolution hangs.

It is an ``autograd.Function`` around aten convolutions, not an opaque custom op: the MAC
counter sees the same convolutions (forward and backward) as for ``nn.Conv2d``.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from lightsr.ops._common import exporting, memory_format_of

__all__ = ["depthwise_conv2d", "depthwise_conv2d_reference"]


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[1] != 1 or weight.shape[0] != x.shape[1]:
        raise ValueError(
            f"depth-wise convolution expects x (B, C, H, W) and weight (C, 1, kh, kw); got "
            f"{tuple(x.shape)} and {tuple(weight.shape)}"
        )


def _reduced_precision_line_on_cpu(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A 1 x K kernel on CPU that would run in bfloat16/float16 (input dtype or CPU autocast).

    oneDNN's bfloat16 depth-wise 1 x 23 convolution on channels-last CPU tensors does not return
    (minutes and counting for a 1 x 8 x 32 x 32 input; 1 x 13, 23 x 1 and float32 are fine;
    torch 2.13.0+cpu on this machine's AVX-512 EPYC): such calls run in float32 instead.
    """
    return (x.device.type == "cpu" and weight.shape[2] == 1 and weight.shape[3] > 1
            and (x.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled("cpu")))


def _conv(x, weight, bias, padding) -> torch.Tensor:
    """``F.conv2d(..., groups=C)``; a 1 x K kernel that would run in reduced precision on the CPU runs
    in float32 (output float32 under autocast, else cast back to the input dtype)."""
    if not _reduced_precision_line_on_cpu(x, weight):
        return F.conv2d(x, weight, bias, padding=tuple(padding), groups=x.shape[1])
    with torch.autocast("cpu", enabled=False):
        y = F.conv2d(x.float(), weight.float(), None if bias is None else bias.float(), padding=tuple(padding),
                     groups=x.shape[1])
    return y if torch.is_autocast_enabled("cpu") else y.to(x.dtype)


def depthwise_conv2d_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int]
) -> torch.Tensor:
    """Depth-wise convolution, stride 1, zero padding ``(ph, pw)``: plain ``F.conv2d`` (autograd's backward)."""
    _check(x, weight)
    return _conv(x, weight, bias, padding)


def _transposed_weight_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, padding) -> torch.Tensor:
    """Weight gradient of a 1 x K depth-wise conv, computed as the K x 1 one on transposed planes."""
    cl = torch.channels_last
    xt = x.transpose(2, 3).contiguous(memory_format=cl)
    gt = grad.transpose(2, 3).contiguous(memory_format=cl)
    wt = weight.transpose(2, 3)
    c = x.shape[1]
    _, gw, _ = torch.ops.aten.convolution_backward(
        gt, xt, wt, None, [1, 1], [padding[1], padding[0]], [1, 1], False, [0, 0], c, [False, True, False]
    )
    return gw.transpose(2, 3).contiguous()


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype active for ``device_type``, or None (also for devices without autocast: meta)."""
    try:
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    except RuntimeError:
        return None


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        # under autocast the convolution would cast its operands itself, and the backward (which runs
        # outside autocast) would then see a bfloat16 input beside a float32 weight: cast explicitly
        # and save the operands the convolution actually used
        dtype = _autocast_dtype(x.device.type)
        if dtype is not None:
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        ctx.save_for_backward(x, weight)
        ctx.padding = tuple(padding)
        ctx.has_bias = bias is not None
        with torch.autocast(x.device.type, enabled=False) if dtype is not None else contextlib.nullcontext():
            return F.conv2d(x, weight, bias, padding=ctx.padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        c, pad = x.shape[1], list(ctx.padding)
        line = weight.shape[2] == 1 and weight.shape[3] > 1
        # channels-last includes channel slices of a channels-last tensor (LAMNet's x2 = chunk of proj_in):
        # aten's own weight gradient is slow for those too (benchmarks/ops_speed.py --backward, 'channel slice' row)
        fast_w = (need_w and line and x.device.type == "cpu" and memory_format_of(x) == torch.channels_last)
        mask = [need_x, need_w and not fast_w, False]
        gx = gw = gb = None
        if any(mask):
            gx, gw, _ = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], pad, [1, 1], False, [0, 0], c, mask
            )
        if fast_w:
            gw = _transposed_weight_grad(grad, x, weight, ctx.padding)
        if need_b and ctx.has_bias:
            gb = grad.sum(dim=(0, 2, 3))
        return gx, gw, gb, None


def depthwise_conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int]
) -> torch.Tensor:
    """Depth-wise convolution (same result as the reference) with the faster 1 x K weight gradient."""
    _check(x, weight)
    if (exporting() or _reduced_precision_line_on_cpu(x, weight) or not torch.is_grad_enabled()
            or not (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))):
        return _conv(x, weight, bias, padding)
    return _DepthwiseConv.apply(x, weight, bias, tuple(padding))
