"""PSNR and SSIM exactly as super-resolution papers compute them (RCAN -> BasicSR -> SwinIR lineage).

Convention (``design/conventions.md`` §2b-2d):

* both images are uint8 (quantise model output with :func:`to_uint8` first: clamp [0, 1], x255,
  round), ``crop_border`` pixels are shaved on every side (papers: ``crop_border = scale``);
* ``y_channel=True`` scores the ITU-R BT.601 studio-swing luma
  ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`` (0..255 scale, **not** rounded), as MATLAB
  ``rgb2ycbcr(im2double(img))`` and BasicSR do; ``y_channel=False`` scores RGB (PSNR over all
  channels jointly, SSIM per channel then averaged);
* float64 arithmetic; PSNR = ``10 log10(255^2 / MSE)`` (``inf`` for identical images);
* SSIM of Wang et al. 2004: 11x11 Gaussian window (sigma 1.5), ``C1 = (0.01*255)^2``,
  ``C2 = (0.03*255)^2``, 'valid' filtering (no padding), mean of the map, no downsampling;
* datasets are scored by the arithmetic mean of per-image values.

Variants used by some papers are options, not defaults: ``round_y=True`` rounds Y to integers
(MATLAB ``rgb2ycbcr`` applied to a uint8 image, as older SRCNN/VDSR scripts and pyiqa do), and
``gray_as_y=True`` scores a single-channel image's values directly as Y (scripts that skip
``rgb2ycbcr`` for grayscale images) instead of treating it as R = G = B.

>>> import numpy as np
>>> a = np.zeros((16, 16, 3), np.uint8); b = a.copy(); b[8, 8] = 255
>>> round(psnr(a, b, y_channel=False), 4)  # MSE = 3 * 255^2 / 768
24.0824
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["psnr", "ssim", "rgb_to_y", "to_uint8", "gaussian_window", "Y_COEFFS"]

# BT.601 studio-swing luma for RGB on a 0..1 scale -> Y on 0..255 (the sum is exactly 219)
Y_COEFFS = (65.481, 128.553, 24.966)
Y_OFFSET = 16.0


def to_uint8(img) -> np.ndarray:
    """Quantise an image in [0, 1] to uint8 the way BasicSR's ``tensor2img`` does.

    Clamps to [0, 1], multiplies by 255 and rounds (to nearest, ties to even, as numpy/torch do).
    Accepts a torch tensor ``(C, H, W)``, ``(1, C, H, W)`` or ``(H, W)`` (returned as HxWxC / HxW
    numpy array) or a float numpy array (layout kept). uint8 input is returned unchanged.
    """
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        torch = None
    if torch is not None and isinstance(img, torch.Tensor):
        t = img.detach()
        if t.dim() == 4:
            if t.shape[0] != 1:
                raise ValueError(f"to_uint8 converts one image; got a batch of {t.shape[0]}")
            t = t[0]
        if t.dtype == torch.uint8:
            arr = t.cpu().numpy()
            return np.ascontiguousarray(arr.transpose(1, 2, 0) if arr.ndim == 3 else arr)
        if not t.is_floating_point():
            raise TypeError(f"to_uint8 expects a float tensor in [0, 1], got {t.dtype}")
        t = t.to("cpu", torch.float64 if t.dtype == torch.float64 else torch.float32)
        arr = t.numpy()
        if arr.ndim == 3:
            arr = arr.transpose(1, 2, 0)
        elif arr.ndim != 2:
            raise ValueError(f"to_uint8 expects (C, H, W) or (H, W), got shape {tuple(img.shape)}")
    else:
        arr = np.asarray(img)
        if arr.dtype == np.uint8:
            return arr
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"to_uint8 expects a float array in [0, 1], got {arr.dtype}")
        if arr.dtype not in (np.float32, np.float64):
            arr = arr.astype(np.float32)
    arr = np.clip(arr, 0, 1)
    return np.ascontiguousarray(np.round(arr * 255.0)).astype(np.uint8)


def _as_float(img: np.ndarray, name: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3):
        return img.astype(np.float64)
    raise ValueError(f"{name}: expected an HxWx3 (RGB) or HxW (gray) image, got shape {img.shape}")


def rgb_to_y(img, *, round_y: bool = False, gray_as_y: bool = False) -> np.ndarray:
    """BT.601 studio-swing Y (float64, 0..255 scale) of an RGB uint8 image (HxWx3, values 0..255).

    A gray image (HxW) is treated as R = G = B unless ``gray_as_y`` (then its values are Y).
    ``round_y`` rounds Y to integers (MATLAB ``rgb2ycbcr`` on uint8 input; ties away from zero).
    Float input is taken to be on the 0..255 scale as well.
    """
    x = _as_float(img, "rgb_to_y")
    if x.ndim == 2:
        if gray_as_y:
            return x
        y = Y_OFFSET + x * (sum(Y_COEFFS) / 255.0)
    else:
        r, g, b = x[..., 0], x[..., 1], x[..., 2]
        y = Y_OFFSET + (Y_COEFFS[0] * r + Y_COEFFS[1] * g + Y_COEFFS[2] * b) / 255.0
    if round_y:
        y = np.floor(y + 0.5)  # Y >= 16 > 0: ties away from zero
    return y


def _prepare(img, ref, crop_border: int, y_channel: bool, round_y: bool, gray_as_y: bool):
    a = np.asarray(img)
    b = np.asarray(ref)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs reference {b.shape}")
    if a.dtype != b.dtype:
        raise ValueError(f"image dtypes differ: {a.dtype} vs reference {b.dtype} (quantise with to_uint8 first)")
    crop_border = int(crop_border)
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        if min(a.shape[0], a.shape[1]) <= 2 * crop_border:
            raise ValueError(f"image {a.shape[:2]} is too small for crop_border={crop_border}")
        a = a[crop_border:-crop_border, crop_border:-crop_border, ...]
        b = b[crop_border:-crop_border, crop_border:-crop_border, ...]
    if y_channel:
        return (rgb_to_y(a, round_y=round_y, gray_as_y=gray_as_y),
                rgb_to_y(b, round_y=round_y, gray_as_y=gray_as_y))
    return _as_float(a, "img"), _as_float(b, "ref")


def psnr(img, ref, crop_border: int = 0, y_channel: bool = True, *, round_y: bool = False,
         gray_as_y: bool = False, max_value: float = 255.0) -> float:
    """PSNR in dB between ``img`` and reference ``ref`` (uint8 HxWx3 RGB or HxW gray; same shape).

    Args:
        crop_border: pixels shaved from every side before scoring (papers: the scale; NTIRE: 4).
        y_channel: score BT.601 Y (papers) instead of RGB.
        round_y: round Y to integers first (MATLAB ``rgb2ycbcr`` on uint8; an older convention).
        gray_as_y: score a gray image's values as Y instead of converting R = G = B to Y.
        max_value: peak value (255 for uint8 images).
    """
    a, b = _prepare(img, ref, crop_border, y_channel, round_y, gray_as_y)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(max_value * max_value / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """1-D Gaussian of ``size`` taps normalised to sum 1 (its outer product is MATLAB ``fspecial``'s window)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """'valid' 2-D correlation of HxW ``x`` with the separable window ``outer(g, g)``."""
    k = g.size
    h, w = x.shape
    rows = np.zeros((h - k + 1, w), dtype=np.float64)
    for i in range(k):
        rows += g[i] * x[i : i + h - k + 1, :]
    out = np.zeros((h - k + 1, w - k + 1), dtype=np.float64)
    for j in range(k):
        out += g[j] * rows[:, j : j + w - k + 1]
    return out


def _ssim_2d(a: np.ndarray, b: np.ndarray, max_value: float) -> float:
    g = gaussian_window(11, 1.5)
    if min(a.shape) < g.size:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels after cropping, got {a.shape}")
    c1 = (0.01 * max_value) ** 2
    c2 = (0.03 * max_value) ** 2
    mu_a = _filter_valid(a, g)
    mu_b = _filter_valid(b, g)
    mu_a2, mu_b2, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    sigma_a2 = _filter_valid(a * a, g) - mu_a2
    sigma_b2 = _filter_valid(b * b, g) - mu_b2
    sigma_ab = _filter_valid(a * b, g) - mu_ab
    ssim_map = ((2 * mu_ab + c1) * (2 * sigma_ab + c2)) / ((mu_a2 + mu_b2 + c1) * (sigma_a2 + sigma_b2 + c2))
    return float(ssim_map.mean())


def ssim(img, ref, crop_border: int = 0, y_channel: bool = True, *, round_y: bool = False,
         gray_as_y: bool = False, max_value: float = 255.0) -> float:
    """SSIM (Wang et al. 2004, Gaussian 11x11, sigma 1.5, 'valid') between ``img`` and ``ref``.

    Same arguments as :func:`psnr`. In RGB mode SSIM is computed per channel and averaged.
    """
    a, b = _prepare(img, ref, crop_border, y_channel, round_y, gray_as_y)
    if a.ndim == 2:
        return _ssim_2d(a, b, max_value)
    return float(np.mean([_ssim_2d(a[..., c], b[..., c], max_value) for c in range(a.shape[2])]))
