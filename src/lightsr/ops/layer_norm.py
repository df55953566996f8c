"""Channels-first LayerNorm (Restormer's "WithBias" LayerNorm, LAMNet's ``LayerNormUnchanged``).

    y[b, :, h, w] = (x[b, :, h, w] - mean) / sqrt(var + eps) * weight + bias

mean and *biased* variance over the channel axis of an NCHW tensor, ``eps`` inside the sqrt.

* :func:`layer_norm_2d_reference` - the formula with broadcasting ops (the test oracle).
* :func:`layer_norm_2d` - one aten ``layer_norm`` call on the channels-last view. On a
  channels-last tensor (the layout the models use on CPU) the view is contiguous and no copy
  is made at all; the result is again channels-last. On an NCHW tensor one copy is made. On
  a 48 x 180 x 320 map it is 3-9x faster than the formula (``benchmarks/ops_speed.py``). At
  inference on dense channels-last float32 CPU tensors: the native kernel of
  ``native/layer_norm.c`` (aten's spends most of its time on per-row set-up for rows of 48-90
  channels: about 1.5x, ``python benchmarks/native_speed.py --kernels``); in float32 training
  (outside autocast) its training forward and one-pass backward
  (:class:`~lightsr.ops._layer_norm_native.TrainedLayerNorm`).
* :func:`layer_norm_2d_residual` - ``(layer_norm_2d(x), x)``, a pre-norm block's two inputs
  (``x + f(LN(x))``); in float32 CPU training the norm's native backward also takes the residual's
  gradient (x's gradient in the same pass, not summed by autograd afterwards).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lightsr.ops import _layer_norm_native
from lightsr.ops import triton as _triton
from lightsr.ops._common import autocast_dtype, exporting, needs_grad, plain_tensors

__all__ = ["layer_norm_2d", "layer_norm_2d_reference", "layer_norm_2d_residual", "layer_norm_2d_residual_reference"]


def layer_norm_2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the channel axis of an NCHW tensor (biased variance, ``eps`` inside the sqrt).

    ``weight`` and ``bias`` hold ``C`` values (any shape that flattens to ``C``). The result has
    the channels-last memory layout (the same values; ``.contiguous()`` gives NCHW). At inference
    under CPU bf16 autocast a float32 ``x`` gives bfloat16 rows on the native path.
    """
    if _triton.wants(x, weight, bias):  # CUDA: one Triton kernel per pass
        return _triton.layer_norm_2d(x, weight, bias, eps)
    if (not needs_grad(x, weight, bias) and not exporting() and plain_tensors(x, weight, bias)
            and _layer_norm_native.usable(x, weight, bias)):
        return _layer_norm_native.layer_norm_rows(x, weight, bias, eps, _autocast_out_dtype(x))
    if _trains_natively(x, weight, bias):
        return _layer_norm_native.TrainedLayerNorm.apply(x, weight, bias, eps)
    c = x.shape[1]
    y = F.layer_norm(x.permute(0, 2, 3, 1), (c,), weight.reshape(c), bias.reshape(c), eps)
    return y.permute(0, 3, 1, 2)


def layer_norm_2d_residual(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                           eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """``(layer_norm_2d(x, weight, bias, eps), x)``: the normalised input of a pre-norm residual block
    and its residual. In float32 CPU training on the native path the residual is a view of ``x``
    returned by the norm's autograd node, whose backward adds the residual's gradient into x's in
    its own pass over the map; otherwise ``x`` itself."""
    if _trains_natively(x, weight, bias):
        return _layer_norm_native.TrainedLayerNormResidual.apply(x, weight, bias, eps)
    return layer_norm_2d(x, weight, bias, eps), x


def layer_norm_2d_residual_reference(x, weight, bias, eps: float = 1e-5):
    """``(layer_norm_2d_reference(x, ...), x)`` (test oracle)."""
    return layer_norm_2d_reference(x, weight, bias, eps), x


def _trains_natively(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> bool:
    """float32 training outside autocast on dense channels-last CPU input: the native forward and backward."""
    return (needs_grad(x, weight, bias) and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and not exporting() and plain_tensors(x, weight, bias) and _layer_norm_native.usable(x, weight, bias))


def _autocast_out_dtype(x: torch.Tensor) -> torch.dtype:
    """Under CPU bf16 autocast a float32 map (LAMNet's residual stream) is normalised into bfloat16
    rows: every consumer (a 1x1 product) would round it to bfloat16 anyway, so the rounding moves
    into the kernel (no float32 map written and converted). Otherwise x's dtype."""
    if x.dtype == torch.float32 and autocast_dtype("cpu") == torch.bfloat16:
        return torch.bfloat16
    return x.dtype


def layer_norm_2d_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5):
    """Plain-formula version of :func:`layer_norm_2d` (test oracle)."""
    c = x.shape[1]
    mu = x.mean(1, keepdim=True)
    var = ((x - mu) ** 2).mean(1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * weight.reshape(1, c, 1, 1) + bias.reshape(1, c, 1, 1)
