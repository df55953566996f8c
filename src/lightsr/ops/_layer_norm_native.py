"""ctypes glue of ``native/layer_norm.c``: the channels-last LayerNorm's forward (inference)."""
from __future__ import annotations

import ctypes

import torch

from lightsr.ops import _native

__all__ = ["NATIVE_SIGNATURES", "layer_norm_rows", "usable"]


class _Geom(ctypes.Structure):
    _fields_ = [("C", ctypes.c_longlong), ("eps", ctypes.c_double)]


_p = ctypes.c_void_p
_ARGS = [_p, _p, _p, _p, ctypes.POINTER(_Geom), ctypes.c_longlong, ctypes.c_longlong]
NATIVE_SIGNATURES = {"lightsr_ln_rows_f32": _ARGS, "lightsr_ln_rows_bf16": _ARGS, "lightsr_ln_rows_f32_bf16": _ARGS}
_ENTRY = {(torch.float32, torch.float32): "lightsr_ln_rows_f32", (torch.bfloat16, torch.bfloat16): "lightsr_ln_rows_bf16",
          (torch.float32, torch.bfloat16): "lightsr_ln_rows_f32_bf16"}
MAX_BF16_CHANNELS = 1024  # LN_BUF of native/layer_norm.c


def usable(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> bool:
    """CPU tensors, x (B, C, H, W) float32 or bfloat16 and dense channels-last, float32 weight and
    bias, and the library built."""
    return (x.device.type == "cpu" and x.dim() == 4 and x.numel() > 0 and x.dtype in (torch.float32, torch.bfloat16)
            and (x.dtype == torch.float32 or x.shape[1] <= MAX_BF16_CHANNELS)
            and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in (weight, bias))
            and weight.numel() == x.shape[1] == bias.numel()
            and x.permute(0, 2, 3, 1).is_contiguous() and _native.library() is not None)


def layer_norm_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                    out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """LayerNorm over the channels of each pixel of a dense channels-last ``x``; channels-last output
    of x's dtype (float32 arithmetic: aten's result for a bfloat16 ``x`` and float32 weights), or
    bfloat16 from a float32 ``x`` with ``out_dtype=torch.bfloat16`` (the float32 result rounded)."""
    b, c, h, w = x.shape
    out_dtype = out_dtype or x.dtype
    entry = _ENTRY[(x.dtype, out_dtype)]
    y = torch.empty(x.shape, dtype=out_dtype, memory_format=torch.channels_last)
    wv, bv = weight.detach().reshape(c).contiguous(), bias.detach().reshape(c).contiguous()
    geom = _Geom(c, float(eps))
    args = [ctypes.c_void_p(t.data_ptr()) for t in (x, wv, bv, y)]
    _native.run_rows(getattr(_native.library(), entry), lambda _, r0, r1: (*args, geom, r0, r1), b * h * w,
                     min_rows=256)
    return y
