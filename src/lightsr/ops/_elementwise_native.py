"""ctypes glue of ``native/elementwise.c``: a bfloat16 branch added onto a float32 stream; the sum
of two bfloat16 maps with evenly strided pixels (channel slices)."""
from __future__ import annotations

import ctypes

import torch

from lightsr.ops import _native

__all__ = ["NATIVE_SIGNATURES", "add_bf16", "add_bf16_into_f32", "column_sum"]

_p, _i64 = ctypes.c_void_p, ctypes.c_longlong
NATIVE_SIGNATURES = {"lightsr_add_f32_bf16": [_p, _p, _p, _i64, _i64],
                     "lightsr_add_bf16": [_p, _i64, _p, _i64, _p, _i64, _i64, _i64],
                     "lightsr_column_sum_f32": [_p, _i64, _p, _i64, _i64]}
_CHUNK = 65536  # elements per part at least (smaller maps run on one thread)
_SUM_MAX = 512  # channels of column_sum (the kernel's SUM_MAX)


def _dense_alike(*tensors: torch.Tensor) -> bool:
    """CPU tensors of one shape and strides, each a dense block (one flat order for all)."""
    first = tensors[0]
    return (all(t.device.type == "cpu" and t.shape == first.shape and t.stride() == first.stride() for t in tensors)
            and first.numel() > 0
            and (first.is_contiguous() or first.dim() == 4 and first.is_contiguous(memory_format=torch.channels_last)))


def add_bf16_into_f32(residual: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
    """``out = residual + y`` for float32 ``residual`` / ``out`` (``out`` may be ``residual``) and a
    bfloat16 ``y`` of the same dense layout, by the native kernel; None (nothing done) where it does not
    apply."""
    if (residual.dtype != torch.float32 or out.dtype != torch.float32 or y.dtype != torch.bfloat16
            or not _dense_alike(residual, y, out)):
        return None
    lib = _native.library()
    if lib is None:
        return None
    args = (_native._ptr(residual), _native._ptr(y), _native._ptr(out))
    _native.run_rows(lib.lightsr_add_f32_bf16, lambda _, i0, i1: (*args, i0, i1), out.numel(), min_rows=_CHUNK)
    return out


def _pixel_stride(t: torch.Tensor) -> int | None:
    """The element stride between consecutive pixels of a channels-last (B, C, H, W) map with unit
    channel stride, where all pixels of all images are evenly strided; else None."""
    b, c, h, w = t.shape
    if c > 1 and t.stride(1) != 1:
        return None
    s = t.stride(3)
    if (h > 1 and t.stride(2) != w * s) or (b > 1 and t.stride(0) != h * w * s) or s < c:
        return None
    return s


def add_bf16(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
    """``a + b`` of two bfloat16 CPU maps of one shape with evenly strided pixels (dense channels-last
    maps or channel slices of them), as a dense channels-last map, by the native kernel; None where it
    does not apply."""
    if (a.dtype != torch.bfloat16 or b.dtype != torch.bfloat16 or a.dim() != 4 or a.shape != b.shape
            or a.device.type != "cpu" or b.device.type != "cpu" or a.numel() == 0):
        return None
    sa, sb = _pixel_stride(a), _pixel_stride(b)
    lib = _native.library()
    if sa is None or sb is None or lib is None:
        return None
    n, c = a.shape[0] * a.shape[2] * a.shape[3], a.shape[1]
    out = torch.empty(a.shape, dtype=torch.bfloat16, memory_format=torch.channels_last)
    args = (_native._ptr(a), sa, _native._ptr(b), sb, _native._ptr(out), c)
    _native.run_rows(lib.lightsr_add_bf16, lambda _, p0, p1: (*args, p0, p1), n, min_rows=max(1, _CHUNK // c))
    return out


def column_sum(rows: torch.Tensor) -> torch.Tensor | None:
    """``rows.sum(0)`` of a contiguous float32 CPU (N, C) matrix (a 1x1 convolution's bias gradient)
    by the native kernel, threads summing row ranges into partial rows; None where it does not apply."""
    if (rows.dtype != torch.float32 or rows.dim() != 2 or rows.device.type != "cpu" or not rows.is_contiguous()
            or rows.numel() == 0 or rows.shape[1] > _SUM_MAX):
        return None
    lib = _native.library()
    if lib is None:
        return None
    n, c = rows.shape
    threads = _native.threads_for(n, max(1, _CHUNK // c))
    partial = torch.empty(threads, c)
    args = (_native._ptr(rows), c)
    _native.run_rows(lib.lightsr_column_sum_f32, lambda i, r0, r1: (*args, _native._ptr(partial[i]), r0, r1), n,
                     min_rows=max(1, _CHUNK // c))
    return partial[0] if threads == 1 else partial.sum(0)
