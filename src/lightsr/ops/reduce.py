"""Means of a map over its pixels (the squeeze of a squeeze-and-excitation gate) or its channels.

* :func:`spatial_mean_reference` - ``x.mean(dim=(2, 3), keepdim=True)`` (the test oracle).
* :func:`spatial_mean` - on bfloat16 channels-last CPU tensors one product of a ones vector with the
  (pixels, C) rows the tensor already is (oneDNN's GEMV, float32 accumulation, the sum rounded to
  bfloat16 as aten's mean rounds the mean): aten's ``mean.dim`` on such a tensor took 4.4 ms for a
  128 x 180 x 320 map against 1.9 ms (Zen 4 EPYC, one thread; float32 gains nothing and keeps aten).
  LGUN's SAL takes this mean 16 times per image, LAMNet's IEM 24 times.
* :func:`channel_mean` / :func:`channel_mean_reference` - ``x.mean(dim=1, keepdim=True)``; on bfloat16
  channels-last CPU tensors the product of the rows with a ones vector (LAMNet's IEM, 32 channels:
  0.50 -> 0.36 ms per 180 x 320 map, same machine).

In training both return their input's gradient as the broadcast ``g / N`` (a view with zero strides
over the averaged axes) instead of aten's mean backward, which writes the broadcast and divides it
(a full-size tensor in NCHW order): autograd adds the view onto the map's other gradient in one
pass (LGUN's SE, LAMNet's IEM).
"""
from __future__ import annotations

import math

import torch

from lightsr.ops._common import exporting, needs_grad

__all__ = ["channel_mean", "channel_mean_reference", "spatial_mean", "spatial_mean_reference"]


def spatial_mean_reference(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 1, 1): the mean of every channel over the pixels."""
    return x.mean(dim=(2, 3), keepdim=True)


def channel_mean_reference(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1, H, W): the mean of every pixel over the channels."""
    return x.mean(dim=1, keepdim=True)


def _rows(x: torch.Tensor) -> torch.Tensor | None:
    """The (B, HW, C) pixel rows of a dense bfloat16 channels-last CPU map (a view), else None."""
    if (x.dim() != 4 or x.device.type != "cpu" or x.dtype != torch.bfloat16 or x.numel() == 0
            or not x.is_contiguous(memory_format=torch.channels_last) or exporting()):
        return None
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


class _BroadcastMeanGrad(torch.autograd.Function):
    """``mean(x)`` (computed by ``fn``) whose backward is the view ``(g / N).expand(x.shape)``."""

    @staticmethod
    def forward(ctx, x, fn):
        ctx.shape, ctx.dtype = x.shape, x.dtype
        return fn(x)

    @staticmethod
    def backward(ctx, g):
        n = math.prod(ctx.shape) // max(1, g.numel())
        return (g / n).to(ctx.dtype).expand(ctx.shape), None


def _with_grad(x: torch.Tensor, fn) -> torch.Tensor | None:
    """``fn(x)`` with the broadcast backward where autograd records it (not while exporting), else None."""
    if not needs_grad(x) or exporting():
        return None
    return _BroadcastMeanGrad.apply(x, fn)


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """The reference's result; a batched product on dense bfloat16 channels-last CPU input."""
    y = _with_grad(x, _spatial_mean)
    return _spatial_mean(x) if y is None else y


def _spatial_mean(x: torch.Tensor) -> torch.Tensor:
    rows = _rows(x)
    if rows is None:
        return spatial_mean_reference(x)
    b, n, c = rows.shape
    return (torch.bmm(rows.new_ones(b, 1, n), rows) / n).view(b, c, 1, 1)


def channel_mean(x: torch.Tensor) -> torch.Tensor:
    """The reference's result; a batched product on dense bfloat16 channels-last CPU input (the
    output is (B, 1, H, W), contiguous)."""
    y = _with_grad(x, _channel_mean)
    return _channel_mean(x) if y is None else y


def _channel_mean(x: torch.Tensor) -> torch.Tensor:
    rows = _rows(x)
    if rows is None:
        return channel_mean_reference(x)
    b, n, c = rows.shape
    return (torch.bmm(rows, rows.new_ones(b, c, 1)) / c).view(b, 1, *x.shape[2:])
