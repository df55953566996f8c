"""Focal separable attention (FSA), the spatial operator of LAMNet's LSAM (paper Sec. 3.2).

A 1-D dynamic filter along one axis with ``K`` taps. Tap ``t`` covers ``len_t`` consecutive
pixels starting at offset ``start_t`` (walking outwards for negative starts) and contributes the
*mean* of those pixels, weighted by a per-pixel coefficient predicted by the network. Near taps
are single pixels; far taps are box averages ("focal"), so 13 taps span a 23-pixel window.

    out[b, c, h, w] = sum_t k[b, g(c)*K + t, h, w] * mean_{i < len_t} x[b, c, h, w + start_t + i*sign(start_t)]

(horizontal; vertical is the same along ``h``). Samples outside the image are zeros but still
count in ``len_t`` (count-include-pad averaging), as in the official CUDA op ``FSAttn``.
Channel ``c`` uses kernel group ``g(c) = c // (C // G)`` (contiguous blocks of channels);
kernel channels are ordered group-major, tap-minor.

* :func:`focal_attention_reference` - a fixed bank of ``K`` box filters applied depth-wise
  (materialises a ``K``-times larger tensor); the test oracle.
* :func:`focal_attention` - average-pools once per distinct tap length and accumulates shifted
  slices; no ``K``-times tensor. Any device and float dtype, autograd-friendly.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "build_kernel_map",
    "focal_attention",
    "focal_attention_reference",
    "patch_size_of",
]

Tap = tuple[int, int]  # (start, length)


def build_kernel_map(strides: Sequence[int] = (1, 2, 4), steps: Sequence[int] = (3, 2, 1)) -> list[Tap]:
    """Tap table ``[(start, len), ...]`` in kernel-channel order, for the paper's stride/step notation.

    One side of the window holds ``steps[i]`` taps of length ``strides[i]`` each, laid end to end
    after the centre tap ``(0, 1)``; the other side mirrors it. LAMNet's default
    (stride [1, 2, 4], step [3, 2, 1]) gives 13 taps over a 23-pixel window::

        (-8,4) (-6,2) (-4,2) (-3,1) (-2,1) (-1,1) (0,1) (1,1) (2,1) (3,1) (4,2) (6,2) (8,4)

    (The official constructor takes ``kernel_loc`` = 1 + cumulative steps, e.g. [4, 6, 7].)
    """
    if len(strides) != len(steps) or not strides:
        raise ValueError("strides and steps must be non-empty and of equal length")
    if any(int(s) < 1 for s in strides) or any(int(n) < 1 for n in steps):
        raise ValueError("strides and steps must be positive integers")
    side: list[Tap] = []
    pos = 1
    for stride, step in zip(strides, steps):
        for _ in range(int(step)):
            side.append((pos, int(stride)))
            pos += int(stride)
    left = [(-s, n) for s, n in reversed(side)]
    return left + [(0, 1)] + side


def patch_size_of(kernel_map: Sequence[Tap]) -> int:
    """Width of the window covered by the taps (23 for LAMNet)."""
    reach = max(abs(s) + n - 1 for s, n in kernel_map)
    return 2 * reach + 1


def _first_offset(start: int, length: int) -> int:
    """Smallest offset a tap covers (negative taps walk outwards)."""
    return start if start >= 0 else start - length + 1


def _check(x: torch.Tensor, kernel: torch.Tensor, n_taps: int) -> tuple[int, int]:
    if x.dim() != 4 or kernel.dim() != 4:
        raise ValueError("focal_attention expects x (B, C, H, W) and kernel (B, G*K, H, W)")
    b, c, h, w = x.shape
    if kernel.shape[0] != b or kernel.shape[2:] != (h, w) or kernel.shape[1] % n_taps:
        raise ValueError(f"kernel shape {tuple(kernel.shape)} does not fit x {tuple(x.shape)} with {n_taps} taps")
    groups = kernel.shape[1] // n_taps
    if c % groups:
        raise ValueError(f"{c} channels cannot be split into {groups} kernel groups")
    return groups, c // groups


def _filter_bank(kernel_map: Sequence[Tap], dtype, device) -> torch.Tensor:
    p = patch_size_of(kernel_map)
    bank = torch.zeros(len(kernel_map), p, dtype=torch.float64)
    for t, (start, length) in enumerate(kernel_map):
        lo = _first_offset(start, length)
        bank[t, lo + p // 2 : lo + p // 2 + length] = 1.0 / length
    return bank.to(device=device, dtype=dtype)


def focal_attention_reference(
    x: torch.Tensor, kernel: torch.Tensor, kernel_map: Sequence[Tap], dim: int = -1
) -> torch.Tensor:
    """Reference FSA along ``dim`` (-1: horizontal / width, -2: vertical / height)."""
    n_taps = len(kernel_map)
    groups, per_group = _check(x, kernel, n_taps)
    b, c, h, w = x.shape
    p = patch_size_of(kernel_map)
    bank = _filter_bank(kernel_map, x.dtype, x.device)  # (K, P)
    if dim in (-1, 3):
        weight, padding = bank.view(n_taps, 1, 1, p), (0, p // 2)
    elif dim in (-2, 2):
        weight, padding = bank.view(n_taps, 1, p, 1), (p // 2, 0)
    else:
        raise ValueError("dim must be -1 (horizontal) or -2 (vertical)")
    weight = weight.repeat(c, 1, 1, 1)  # output channel = c*K + t
    taps = F.conv2d(x, weight, padding=padding, groups=c)  # (B, C*K, H, W)
    taps = taps.view(b, groups, per_group, n_taps, h, w)
    return (taps * kernel.view(b, groups, 1, n_taps, h, w)).sum(dim=3).view(b, c, h, w)


def focal_attention(
    x: torch.Tensor, kernel: torch.Tensor, kernel_map: Sequence[Tap], dim: int = -1
) -> torch.Tensor:
    """Fast FSA along ``dim``: one average-pool per distinct tap length, then shifted multiply-adds."""
    n_taps = len(kernel_map)
    groups, per_group = _check(x, kernel, n_taps)
    b, c, h, w = x.shape
    p = patch_size_of(kernel_map)
    half = p // 2
    if dim in (-1, 3):
        xp = F.pad(x, (half, half, 0, 0))
        size, pool = w, (lambda t, n: F.avg_pool2d(t, (1, n), stride=1))
    elif dim in (-2, 2):
        xp = F.pad(x, (0, 0, half, half))
        size, pool = h, (lambda t, n: F.avg_pool2d(t, (n, 1), stride=1))
    else:
        raise ValueError("dim must be -1 (horizontal) or -2 (vertical)")
    sources = {}
    for n in sorted({n for _, n in kernel_map}):
        src = xp if n == 1 else pool(xp, n)
        sources[n] = src.view(b, groups, per_group, *src.shape[-2:])
    kv = kernel.view(b, groups, n_taps, 1, h, w)
    out = None
    for t, (start, length) in enumerate(kernel_map):
        lo = _first_offset(start, length) + half
        src = sources[length]
        src = src[..., lo : lo + size] if dim in (-1, 3) else src[..., lo : lo + size, :]
        term = src * kv[:, :, t]
        out = term if out is None else out + term
    return out.reshape(b, c, h, w)
