"""ctypes glue of ``native/elementwise.c``: a bfloat16 branch added onto a float32 stream."""
from __future__ import annotations

import ctypes

import torch

from lightsr.ops import _native

__all__ = ["NATIVE_SIGNATURES", "add_bf16_into_f32"]

_p, _i64 = ctypes.c_void_p, ctypes.c_longlong
NATIVE_SIGNATURES = {"lightsr_add_f32_bf16": [_p, _p, _p, _i64, _i64]}
_CHUNK = 65536  # elements per part at least (smaller maps run on one thread)


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
    args = (ctypes.c_void_p(residual.data_ptr()), ctypes.c_void_p(y.data_ptr()), ctypes.c_void_p(out.data_ptr()))
    _native.run_rows(lib.lightsr_add_f32_bf16, lambda _, i0, i1: (*args, i0, i1), out.numel(), min_rows=_CHUNK)
    return out
