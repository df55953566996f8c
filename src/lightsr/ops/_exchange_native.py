"""ctypes glue of ``native/exchange.c``: LAMNet's information exchange in float32 training, the two
gated branches written side by side (the concatenation ``proj_out`` reads), with its backward
(:class:`TrainedExchangeConcat`)."""
from __future__ import annotations

import ctypes

import torch

from lightsr.ops import _native

__all__ = ["NATIVE_SIGNATURES", "TrainedExchangeConcat", "usable"]


class _Geom(ctypes.Structure):
    _fields_ = [(name, ctypes.c_longlong) for name in ("N", "C", "cb", "cp", "sb", "sp", "ob", "op", "gcb", "gcp",
                                                          "gsb", "gsp")]


_p, _i64 = ctypes.c_void_p, ctypes.c_longlong
MAX_CHANNELS = 1024  # IEM_MAX_CHANNELS of native/exchange.c
NATIVE_SIGNATURES = {
    "lightsr_iem_forward_f32": [_p] * 4 + [ctypes.POINTER(_Geom), _i64, _i64],
    "lightsr_iem_backward_f32": [_p] * 6 + [ctypes.POINTER(_Geom), _i64, _i64],
}


def _pixel_rows(t: torch.Tensor) -> bool:
    """(B, C, H, W) whose pixels are rows of C unit-stride channels a constant stride apart."""
    return t.dim() == 4 and (t.shape[1] == 1 or t.stride(1) == 1) and t.stride(2) == t.shape[3] * t.stride(3)


def usable(x_c: torch.Tensor, x_s: torch.Tensor) -> bool:
    """float32 CPU maps of one shape, pixel rows (channels-last or a channel slice of it), channels a
    multiple of 8, and the library built."""
    return (x_c.shape == x_s.shape and x_c.dim() == 4 and x_c.numel() > 0
            and x_c.shape[1] % 8 == 0 and x_c.shape[1] <= MAX_CHANNELS
            and all(t.device.type == "cpu" and t.dtype == torch.float32 and _pixel_rows(t) for t in (x_c, x_s))
            and _native.library() is not None)


def _geom(x_c, x_s, cat, gx_c=None, gx_s=None) -> _Geom:
    b, c, h, w = x_c.shape
    gc, gs = (gx_c, gx_s) if gx_c is not None else (x_c, x_s)
    return _Geom(h * w, c, x_c.stride(0), x_c.stride(3), x_s.stride(0), x_s.stride(3), cat.stride(0), cat.stride(3),
                 gc.stride(0), gc.stride(3), gs.stride(0), gs.stride(3))


def _run(name: str, tensors, geom: _Geom, images: int) -> None:
    args = [_native._ptr(t) for t in tensors]
    codes = _native.run_rows(getattr(_native.library(), name), lambda _, b0, b1: (*args, geom, b0, b1), images,
                             min_rows=1)
    if any(codes):
        raise (MemoryError("information exchange: cannot allocate the native kernel's scratch buffer") if 2 in codes
               else ValueError("information exchange: unsupported channel count for the native kernel"))


class TrainedExchangeConcat(torch.autograd.Function):
    """``apply(x_c, x_s) -> cat([m x_c, n x_s], 1)``, channels-last (:func:`usable` first)."""

    @staticmethod
    def forward(ctx, x_c, x_s):
        b, c, h, w = x_c.shape
        cat = torch.empty((b, 2 * c, h, w), memory_format=torch.channels_last)
        stats = torch.empty(b, 2 * c + 2 * h * w)
        _run("lightsr_iem_forward_f32", (x_c, x_s, cat, stats), _geom(x_c, x_s, cat), b)
        ctx.save_for_backward(x_c, x_s, stats)
        return cat

    @staticmethod
    def backward(ctx, g):
        x_c, x_s, stats = ctx.saved_tensors
        g = g.contiguous(memory_format=torch.channels_last)
        gx_c = torch.empty(x_c.shape, memory_format=torch.channels_last)
        gx_s = torch.empty(x_s.shape, memory_format=torch.channels_last)
        _run("lightsr_iem_backward_f32", (g, x_c, x_s, stats, gx_c, gx_s), _geom(x_c, x_s, g, gx_c, gx_s),
             x_c.shape[0])
        return gx_c, gx_s
