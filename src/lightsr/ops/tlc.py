"""Test-time Local Converter (TLC, Chu et al., ECCV 2022) for global operators.

A model trained on small patches and then run on a whole image sees global statistics (here:
DLGSANet's channel attention over all pixels) it never saw in training. TLC replaces the global
operator at test time by the same operator applied on overlapping local windows of a fixed
size, and averages the windows' outputs where they overlap.

Window layout (as in the official TLC / DLGSANet code): the window is ``k`` pixels, clipped to
the image; ``n = ceil(size / k)`` windows per axis; step ``ceil((size - k) / (n - 1))``; the last
window is moved flush with the border. Windows are processed independently and each output pixel
is the mean over the windows that contain it.

* :func:`tlc_reference` - one window at a time (the official algorithm, any batch size).
* :func:`tlc` - the windows of all images stacked along the batch axis: one call of ``fn`` on
  accelerators, cache-sized chunks on CPU (where a window that stays in L2 wins); outputs
  scaled by a cached inverse coverage map.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import torch

from lightsr.ops._common import memory_format_of

__all__ = ["inverse_coverage", "tlc", "tlc_reference", "tlc_windows"]

Window = tuple[int, int, int, int]  # (top, left, height, width)


def _starts(size: int, k: int) -> list[int]:
    n = (size - 1) // k + 1
    step = k if n == 1 else math.ceil((size - k) / (n - 1) - 1e-8)
    starts, i = [], 0
    while True:
        if i + k >= size:
            starts.append(size - k)
            return starts
        starts.append(i)
        i += step


@lru_cache(maxsize=64)
def tlc_windows(height: int, width: int, kernel_h: int, kernel_w: int | None = None) -> tuple[Window, ...]:
    """Window rectangles covering a ``height x width`` map for a window of ``kernel_h x kernel_w``."""
    kh = min(height, kernel_h)
    kw = min(width, kernel_w if kernel_w is not None else kernel_h)
    return tuple((i, j, kh, kw) for i in _starts(height, kh) for j in _starts(width, kw))


def _coverage(windows, height, width, device, dtype) -> torch.Tensor:
    count = torch.zeros(1, 1, height, width, device=device, dtype=dtype)
    for i, j, kh, kw in windows:
        count[..., i : i + kh, j : j + kw] += 1
    return count


@lru_cache(maxsize=16)
def inverse_coverage(height: int, width: int, kh: int, kw: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """1 / (number of windows covering each pixel), cached per size (inference repeats sizes)."""
    return _coverage(tlc_windows(height, width, kh, kw), height, width, device, torch.float64).reciprocal_().to(dtype)


# Windows per call of ``fn`` on CPU: about this many input elements (2 MiB in float32). On CPU
# a window that stays in the L2 cache through all of ``fn``'s ops beats stacking: for DLGSANet's
# SparseGSA at 320x180 (28 windows of 144 x 48 x 48) one window per call took 32 ms, 3 per call
# 44 ms, all 28 stacked 67 ms (benchmarks/ops_speed.py --tlc-chunks). Accelerators take all
# windows in one call (fewer kernel launches).
_CHUNK_ELEMENTS = 2**19


def tlc_reference(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, kernel: int | tuple[int, int]
) -> torch.Tensor:
    """Apply ``fn`` (a map ``(N, C_in, h, w) -> (N, C_out, h, w)``) window by window and average."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    b, _, h, w = x.shape
    windows = tlc_windows(h, w, kh, kw)
    out = None
    for i, j, wh, ww in windows:
        y = fn(x[:, :, i : i + wh, j : j + ww])
        if out is None:
            out = y.new_zeros(b, y.shape[1], h, w)
        out[:, :, i : i + wh, j : j + ww] += y
    return out / _coverage(windows, h, w, out.device, out.dtype)


def tlc(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, kernel: int | tuple[int, int]) -> torch.Tensor:
    """Batched TLC: the windows of every image go through ``fn`` stacked along the batch axis
    (on CPU in cache-sized chunks, usually one window), the outputs are summed onto the canvas
    and multiplied by the cached inverse coverage."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    b, c, h, w = x.shape
    windows = tlc_windows(h, w, kh, kw)
    if len(windows) == 1:
        return fn(x)
    wh, ww = windows[0][2], windows[0][3]
    per_call = len(windows)
    if x.device.type == "cpu":
        per_call = max(1, min(per_call, _CHUNK_ELEMENTS // max(1, b * c * wh * ww)))
    out = None
    for n0 in range(0, len(windows), per_call):
        chunk = windows[n0 : n0 + per_call]
        views = [x[:, :, i : i + wh, j : j + ww] for i, j, _, _ in chunk]
        parts = views[0] if len(views) == 1 else torch.cat(views, dim=0)  # no copy for a single window
        y = fn(parts)
        y = y.view(len(chunk), b, *y.shape[1:])
        if out is None:  # in the layout of fn's output (channels-last on CPU): no strided accumulation
            out = torch.empty((b, y.shape[2], h, w), dtype=y.dtype, device=y.device,
                              memory_format=memory_format_of(y[0])).zero_()
        for n, (i, j, _, _) in enumerate(chunk):
            out[:, :, i : i + wh, j : j + ww] += y[n]
    return out.mul_(inverse_coverage(h, w, kh, kw, out.device, out.dtype))
