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
* :func:`dynamic_dwconv` - accumulates one shifted product per tap, never materialising the
  unfolded tensor. Pure PyTorch, any device, any float dtype, autograd-friendly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dynamic_dwconv", "dynamic_dwconv_reference"]


def _check(x: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> tuple[int, int]:
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError("dynamic_dwconv expects x (B, C, H, W) and weight (B, G*K*K, H, W)")
    b, c, h, w = x.shape
    kk = kernel_size * kernel_size
    if weight.shape[0] != b or weight.shape[2:] != (h, w) or weight.shape[1] % kk:
        raise ValueError(
            f"weight shape {tuple(weight.shape)} does not fit x {tuple(x.shape)} and kernel {kernel_size}"
        )
    groups = weight.shape[1] // kk
    if c % groups:
        raise ValueError(f"{c} channels cannot be split into {groups} kernel groups")
    return groups, c // groups


def dynamic_dwconv_reference(x: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Reference implementation via ``F.unfold`` (memory: ``K*K`` x the input)."""
    groups, per_group = _check(x, weight, kernel_size)
    b, c, h, w = x.shape
    kk = kernel_size * kernel_size
    cols = F.unfold(x, kernel_size, padding=kernel_size // 2)  # (B, C*K*K, H*W), channel-major
    cols = cols.view(b, groups, per_group, kk, h, w)
    return (cols * weight.view(b, groups, 1, kk, h, w)).sum(dim=3).view(b, c, h, w)


def dynamic_dwconv(x: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Fast implementation: one fused multiply-add of a shifted view per kernel tap."""
    groups, per_group = _check(x, weight, kernel_size)
    b, c, h, w = x.shape
    p = kernel_size // 2
    xp = F.pad(x, (p, p, p, p)).view(b, groups, per_group, h + 2 * p, w + 2 * p)
    wt = weight.view(b, groups, kernel_size * kernel_size, 1, h, w)
    out = None
    for t in range(kernel_size * kernel_size):
        i, j = divmod(t, kernel_size)
        term = xp[:, :, :, i : i + h, j : j + w] * wt[:, :, t]
        out = term if out is None else out + term
    return out.reshape(b, c, h, w)
