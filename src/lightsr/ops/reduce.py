"""The per-channel mean over the pixels (the squeeze of a squeeze-and-excitation gate).

* :func:`spatial_mean_reference` - ``x.mean(dim=(2, 3), keepdim=True)`` (the test oracle).
* :func:`spatial_mean` - on bfloat16 channels-last CPU tensors one product of a ones vector with the
  (pixels, C) rows the tensor already is (oneDNN's GEMV, float32 accumulation, the sum rounded to
  bfloat16 as aten's mean rounds the mean): aten's ``mean.dim`` on such a tensor took 4.4 ms for a
  128 x 180 x 320 map against 1.9 ms (Zen 4 EPYC, one thread; float32 gains nothing and keeps aten).
  LGUN's SAL takes this mean 16 times per image.
"""
from __future__ import annotations

import torch

from lightsr.ops._common import exporting

__all__ = ["spatial_mean", "spatial_mean_reference"]


def spatial_mean_reference(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 1, 1): the mean of every channel over the pixels."""
    return x.mean(dim=(2, 3), keepdim=True)


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """The reference's result; a batched product on dense bfloat16 channels-last CPU input."""
    if (x.dim() != 4 or x.device.type != "cpu" or x.dtype != torch.bfloat16 or x.numel() == 0
            or not x.is_contiguous(memory_format=torch.channels_last) or exporting()):
        return spatial_mean_reference(x)
    b, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view
    sums = torch.bmm(rows.new_ones(b, 1, h * w), rows)  # (B, 1, C)
    return (sums / (h * w)).view(b, c, 1, 1)
