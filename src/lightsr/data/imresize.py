"""MATLAB-compatible bicubic ``imresize`` (the resize every SR benchmark LR image was made with).

The kernel, coordinate mapping, antialiasing, symmetric borders and the per-pass rounding follow
MATLAB's ``imresize(img, scale, 'bicubic')`` (see ``design/conventions.md`` §2a and its appendix):

* Keys cubic kernel with a = -0.5; when downscaling (``scale < 1``) with antialiasing, the kernel is
  stretched to width ``4 / scale`` and scaled by ``scale``;
* output index ``i`` (1-based) samples input position ``u = i / scale + 0.5 * (1 - 1 / scale)``
  with taps ``floor(u - width / 2) + 0 .. ceil(width) + 1``, weights normalised to sum to one;
* borders mirror symmetrically, repeating the edge pixel (``1..N, N..1, ...``);
* height is resized first, then width; for integer images (uint8 / uint16) each 1-D pass is
  computed in float64 and rounded half away from zero and clipped, exactly as MATLAB does.

On uint8 input this reproduces the MATLAB-made ``LR_bicubic`` files of Set5 and Set14 bit for bit.

Functions:

* :func:`imresize` - numpy, uint8/uint16 in -> same dtype out; float in -> float64 out (no rounding);
* :func:`imresize_tensor` - float torch tensors ``(B, C, H, W)`` or ``(C, H, W)``, differentiable;
* :func:`modcrop` - crop height and width down to multiples of the scale (done before making LR);
* :func:`resize_weights` - the per-axis ``(indices, weights)`` tables both resizers use.

>>> import numpy as np
>>> hr = np.zeros((256, 256, 3), np.uint8)
>>> imresize(modcrop(hr, 3), 1 / 3).shape
(85, 85, 3)
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np

__all__ = ["imresize", "imresize_tensor", "modcrop", "output_size", "resize_weights", "cubic"]


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``), evaluated in float64."""
    absx = np.abs(np.asarray(x, dtype=np.float64))
    absx2 = absx * absx
    absx3 = absx2 * absx
    near = (1.5 * absx3 - 2.5 * absx2 + 1.0) * (absx <= 1)
    far = (-0.5 * absx3 + 2.5 * absx2 - 4.0 * absx + 2.0) * ((absx > 1) & (absx <= 2))
    return near + far


def output_size(length: int, scale: float) -> int:
    """``ceil(length * scale)`` as MATLAB computes it, tolerant of binary fractions (``255 * (1/3)``)."""
    value = length * scale
    nearest = round(value)
    if abs(value - nearest) < 1e-9 * max(1.0, abs(value)):
        return int(nearest)
    return int(math.ceil(value))


@lru_cache(maxsize=64)
def resize_weights(in_length: int, out_length: int, scale: float, antialiasing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis resampling table: ``indices`` (out, P) int64 into ``0..in_length-1`` and ``weights`` (out, P) float64.

    ``out[i] = sum_p weights[i, p] * in[indices[i, p]]``. Taps whose weight is zero for every output
    (the first/last column, as MATLAB drops them) are removed. The arrays are cached and read-only.
    """
    if in_length < 1 or out_length < 1:
        raise ValueError(f"cannot resize length {in_length} to {out_length}")
    kernel_width = 4.0
    stretch = antialiasing and scale < 1
    if stretch:
        kernel_width = kernel_width / scale
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based positions
    distance = u[:, None] - indices
    if stretch:
        weights = scale * cubic(scale * distance)
    else:
        weights = cubic(distance)
    weights = weights / np.sum(weights, axis=1, keepdims=True)
    # symmetric borders repeating the edge pixel: 1..N, N..1, 1..N, ...
    period = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    idx = period[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]
    keep = np.any(weights != 0, axis=0)
    idx, weights = np.ascontiguousarray(idx[:, keep]), np.ascontiguousarray(weights[:, keep])
    idx.setflags(write=False)
    weights.setflags(write=False)
    return idx, weights


def _scales(scale: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(scale, (tuple, list)):
        if len(scale) != 2:
            raise ValueError(f"scale must be a number or (scale_h, scale_w), got {scale!r}")
        sh, sw = float(scale[0]), float(scale[1])
    else:
        sh = sw = float(scale)
    if not (sh > 0 and sw > 0 and math.isfinite(sh) and math.isfinite(sw)):
        raise ValueError(f"scale must be positive, got {scale!r}")
    return sh, sw


def _round_clip(x: np.ndarray, maxval: float) -> np.ndarray:
    """Round half away from zero (exactly, no x+0.5 drift), then clip to ``[0, maxval]``."""
    floor = np.floor(x)
    out = floor + (x - floor >= 0.5)
    return np.clip(out, 0.0, maxval, out=out)


def _resize_axis(x: np.ndarray, axis: int, out_length: int, scale: float, antialiasing: bool, maxval: float | None) -> np.ndarray:
    in_length = x.shape[axis]
    idx, w = resize_weights(in_length, out_length, scale, antialiasing)
    moved = np.moveaxis(x, axis, 0)
    rest = moved.shape[1:]
    flat = np.ascontiguousarray(moved).reshape(in_length, -1)
    out = np.zeros((out_length, flat.shape[1]), dtype=np.float64)
    tap = np.empty_like(out)
    # accumulate tap by tap (MATLAB's summation order); each step gathers whole rows
    for p in range(idx.shape[1]):
        np.multiply(flat[idx[:, p]], w[:, p, None], out=tap)
        out += tap
    if maxval is not None:
        out = _round_clip(out, maxval)
    return np.moveaxis(out.reshape((out_length,) + rest), 0, axis)


def imresize(
    img: np.ndarray,
    scale: float | Sequence[float],
    *,
    antialiasing: bool = True,
    output_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Resize ``img`` (HxW or HxWxC numpy array) exactly like MATLAB ``imresize(img, scale, 'bicubic')``.

    Args:
        img: uint8 / uint16 image (result rounded and clipped after each 1-D pass, returned in the
            same dtype, as MATLAB does) or float image (float64 result, not rounded or clipped).
        scale: size factor: ``0.25`` downscales by 4, ``2`` upscales by 2; a pair gives (height, width).
        antialiasing: stretch the kernel when downscaling (MATLAB default ``true``).
        output_shape: ``(height, width)`` of the result; defaults to ``ceil(size * scale)``.
    """
    img = np.asarray(img)
    if img.ndim not in (2, 3):
        raise ValueError(f"imresize expects an HxW or HxWxC array, got shape {img.shape}")
    if img.dtype == np.uint8:
        maxval: float | None = 255.0
    elif img.dtype == np.uint16:
        maxval = 65535.0
    elif np.issubdtype(img.dtype, np.floating):
        maxval = None
    else:
        raise TypeError(f"imresize supports uint8, uint16 and float arrays, not {img.dtype}")
    sh, sw = _scales(scale)
    h, w = img.shape[:2]
    if output_shape is None:
        out_h, out_w = output_size(h, sh), output_size(w, sw)
    else:
        out_h, out_w = int(output_shape[0]), int(output_shape[1])
    x = img if maxval is not None else img.astype(np.float64, copy=False)  # ints are promoted per tap
    x = _resize_axis(x, 0, out_h, sh, antialiasing, maxval)  # height first, as MATLAB
    x = _resize_axis(x, 1, out_w, sw, antialiasing, maxval)
    if maxval is not None:
        return x.astype(img.dtype)
    return x


def _weight_matrix(in_length: int, out_length: int, scale: float, antialiasing: bool):
    """Dense (out, in) float64 numpy matrix of the same resampling (mirrored taps accumulated)."""
    idx, w = resize_weights(in_length, out_length, scale, antialiasing)
    mat = np.zeros((out_length, in_length), dtype=np.float64)
    rows = np.repeat(np.arange(out_length), idx.shape[1])
    np.add.at(mat, (rows, idx.ravel()), w.ravel())
    return mat


@lru_cache(maxsize=64)
def _weight_matrix_cached(in_length: int, out_length: int, scale: float, antialiasing: bool) -> np.ndarray:
    mat = _weight_matrix(in_length, out_length, scale, antialiasing)
    mat.setflags(write=False)
    return mat


def imresize_tensor(
    t,
    scale: float | Sequence[float],
    *,
    antialiasing: bool = True,
    output_shape: tuple[int, int] | None = None,
):
    """MATLAB-bicubic resize of a float torch tensor ``(B, C, H, W)`` or ``(C, H, W)``; differentiable.

    Same kernel, borders and axis order as :func:`imresize` but no rounding (float in, same float
    dtype out, on the same device). Implemented as two matrix products with the per-axis weight
    matrices, so gradients flow to the input.
    """
    import torch

    if not isinstance(t, torch.Tensor):
        raise TypeError(f"imresize_tensor expects a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"imresize_tensor expects a float tensor, got {t.dtype}; use imresize for uint8 arrays")
    if t.dim() not in (3, 4):
        raise ValueError(f"imresize_tensor expects (C, H, W) or (B, C, H, W), got shape {tuple(t.shape)}")
    sh, sw = _scales(scale)
    h, w = t.shape[-2:]
    if output_shape is None:
        out_h, out_w = output_size(h, sh), output_size(w, sw)
    else:
        out_h, out_w = int(output_shape[0]), int(output_shape[1])
    mh = torch.from_numpy(np.array(_weight_matrix_cached(h, out_h, sh, antialiasing))).to(t.device, t.dtype)
    mw = torch.from_numpy(np.array(_weight_matrix_cached(w, out_w, sw, antialiasing))).to(t.device, t.dtype)
    out = torch.matmul(mh, t)  # (.., out_h, W): height first
    return torch.matmul(out, mw.transpose(0, 1))


def modcrop(img, scale: int):
    """Crop the bottom/right so that height and width are multiples of ``scale`` (top-left kept).

    Works on numpy arrays HxW / HxWxC and on torch tensors ``(..., H, W)``.
    """
    scale = int(scale)
    if scale < 1:
        raise ValueError(f"modcrop scale must be >= 1, got {scale}")
    try:
        import torch

        if isinstance(img, torch.Tensor):
            h, w = img.shape[-2:]
            return img[..., : h - h % scale, : w - w % scale]
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    img = np.asarray(img)
    if img.ndim not in (2, 3):
        raise ValueError(f"modcrop expects an HxW or HxWxC array, got shape {img.shape}")
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale, ...]
