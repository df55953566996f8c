"""ctypes glue of ``native/layer_norm.c``: the channels-last LayerNorm's forward (inference) and its float32
training forward and backward (:class:`TrainedLayerNorm`)."""
from __future__ import annotations

import ctypes

import torch

from lightsr.ops import _native

__all__ = ["NATIVE_SIGNATURES", "TrainedLayerNorm", "TrainedLayerNormResidual", "layer_norm_rows", "usable"]


class _Geom(ctypes.Structure):
    _fields_ = [("C", ctypes.c_longlong), ("eps", ctypes.c_double)]


_p = ctypes.c_void_p
_ARGS = [_p, _p, _p, _p, ctypes.POINTER(_Geom), ctypes.c_longlong, ctypes.c_longlong]
_i64 = ctypes.c_longlong
NATIVE_SIGNATURES = {"lightsr_ln_rows_f32": _ARGS, "lightsr_ln_rows_bf16": _ARGS, "lightsr_ln_rows_f32_bf16": _ARGS,
                     "lightsr_ln_train_f32": [_p, _p, _p, _p, _p, ctypes.POINTER(_Geom), _i64, _i64],
                     "lightsr_ln_backward_f32": [_p] * 7 + [ctypes.POINTER(_Geom), _i64, _i64, _i64]}
BAND = 256  # LN_BAND of native/layer_norm.c: rows per partial sum of the weight and bias gradients
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
    """LayerNorm over the channels of each pixel of a dense channels-last ``x`` (inference); channels-last
    output of x's dtype (float32 arithmetic: aten's result for a bfloat16 ``x`` and float32 weights), or
    bfloat16 from a float32 ``x`` with ``out_dtype=torch.bfloat16`` (the float32 result rounded)."""
    out_dtype = out_dtype or x.dtype
    return _forward(_ENTRY[(x.dtype, out_dtype)], x, weight, bias, eps, out_dtype)


def _forward(entry: str, x, weight, bias, eps, out_dtype, *extra) -> torch.Tensor:
    """The rows of x by the native forward ``entry``; ``extra`` tensors are passed after the output
    (the training forward's per-row statistics)."""
    b, c, h, w = x.shape
    y = torch.empty(x.shape, dtype=out_dtype, memory_format=torch.channels_last)
    wv, bv = weight.detach().reshape(c).contiguous(), bias.detach().reshape(c).contiguous()
    geom = _Geom(c, float(eps))
    args = [_native._ptr(t) for t in (x, wv, bv, y, *extra)]
    _native.run_rows(getattr(_native.library(), entry), lambda _, r0, r1: (*args, geom, r0, r1), b * h * w,
                     min_rows=256)
    return y


def _train_forward(ctx, x, weight, bias, eps) -> torch.Tensor:
    b, c, h, w = x.shape
    stats = torch.empty(b * h * w, 2)
    y = _forward("lightsr_ln_train_f32", x, weight, bias, eps, torch.float32, stats)
    ctx.save_for_backward(x, weight.detach().reshape(c).contiguous(), stats)
    ctx.eps, ctx.shapes = eps, (weight.shape, bias.shape)
    return y


def _train_backward(ctx, gy, gres):
    """(x, weight, bias gradients): one native pass over x and gy (plus gres, added into x's gradient,
    when not None)."""
    x, wv, stats = ctx.saved_tensors
    b, c, h, w = x.shape
    rows = b * h * w
    cl = torch.channels_last
    if gy is None:  # only the residual was used
        return gres.contiguous(memory_format=cl), None, None
    gy = gy.contiguous(memory_format=cl)
    gres = None if gres is None else gres.contiguous(memory_format=cl)
    gx = torch.empty(x.shape, memory_format=cl)
    bands = (rows + BAND - 1) // BAND
    part = torch.empty(bands, 2, c)
    geom = _Geom(c, float(ctx.eps))
    args = [None if t is None else _native._ptr(t) for t in (gy, x, wv, stats, gres, gx, part)]
    _native.run_rows(_native.library().lightsr_ln_backward_f32, lambda _, k0, k1: (*args, geom, rows, k0, k1),
                     bands, min_rows=1)
    sums = part.cumsum(0)[-1]  # over the bands in band order
    w_shape, b_shape = ctx.shapes
    return gx, sums[0].view(w_shape), sums[1].view(b_shape)


class TrainedLayerNorm(torch.autograd.Function):
    """The float32 LayerNorm of a dense channels-last ``x`` with its native backward:
    ``apply(x, weight, bias, eps)`` (:func:`usable` first, float32 x). The forward keeps every row's
    mean and 1 / std; the backward is one pass over x and the gradient (the input gradient, and the
    weight and bias gradients summed per band of rows, then over the bands in order: the same bits on
    any number of threads)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        return _train_forward(ctx, x, weight, bias, eps)

    @staticmethod
    def backward(ctx, gy):
        return (*_train_backward(ctx, gy, None), None)


class TrainedLayerNormResidual(torch.autograd.Function):
    """:class:`TrainedLayerNorm` that also hands back its input, ``apply(x, weight, bias, eps) -> (y, x)``
    (x as a view owned by this node): a pre-norm block's residual. Autograd would sum the residual's
    gradient and the norm's input gradient in a separate pass over the map; here the backward adds it
    in its own pass."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None (no zero map)
        return _train_forward(ctx, x, weight, bias, eps), x

    @staticmethod
    def backward(ctx, gy, gres):
        return (*_train_backward(ctx, gy, gres), None)
