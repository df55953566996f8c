"""The :class:`Upscaler` (a loaded model plus its settings) and the one-call :func:`upscale`.

What happens to an image is described in :mod:`lightsr.inference`; this module holds the code.
Memory: the input stays in its own dtype (8- or 16-bit) and only the tile being processed is
converted to float32 - a 169-megapixel image costs its input and output arrays plus one tile,
not a float32 copy of the whole image.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lightsr.inference.io import ImageData, from_pil, with_pixels
from lightsr.inference.policy import auto_precision
from lightsr.inference.runner import ModelRunner, OutOfMemory, auto_tile, default_budget, resolve_device
from lightsr.inference.tiling import run_tiled

__all__ = ["DEFAULT_OVERLAP", "Upscaler", "WeightsMissing", "load_upscale_model", "upscale"]

DEFAULT_OVERLAP = 32
SINK_ROWS = 128  # output rows converted at a time (bounds the temporaries of quantisation)
ALPHA_MODES = ("bicubic", "model")
_LUMA = (0.299, 0.587, 0.114)  # BT.601, as Pillow's convert("L")


class WeightsMissing(ValueError):
    """No weights were given and none ship for the requested model (message is one line)."""


def load_upscale_model(model: str | nn.Module | None = None, scale: int | None = None,
                       weights: str | Path | None = None) -> tuple[nn.Module, int]:
    """Resolve the ``model`` / ``scale`` / ``weights`` arguments of :func:`upscale` to a module.

    * ``weights`` given: :func:`lightsr.load_model` reads it (lightsr safetensors or BasicSR
      ``.pth``; a URL is downloaded once into the cache, see :func:`lightsr.pretrained.resolve_weights`;
      ``"default"`` means the shipped weights); ``model`` and ``scale``, when given, must agree with the file
      (:class:`lightsr.CheckpointError` otherwise).
    * a model name without weights: the weights shipped with lightsr
      (:func:`lightsr.pretrained.default_weights`), or :class:`WeightsMissing` - lightsr never
      upscales with random weights.
    * an ``nn.Module``: used as is; its scale is ``model.scale`` (or ``scale``).
    """
    from lightsr import load_model
    from lightsr.models import get_spec
    from lightsr.pretrained import DEFAULT_MODEL, default_weights

    if isinstance(model, nn.Module):
        if weights is not None:
            raise ValueError("pass either an nn.Module or weights, not both")
        found = getattr(model, "scale", None)
        if found is not None and scale is not None and int(found) != int(scale):
            raise ValueError(f"the model upscales x{found}, not x{scale}")
        s = found if found is not None else scale
        if s is None:
            raise ValueError("scale= is needed for a module without a .scale attribute")
        return model, int(s)
    if weights is not None and str(weights) != "default":
        from lightsr.pretrained import resolve_weights

        if model is not None:
            get_spec(model)  # a mistyped name is reported as such, not as a weights problem
        # a path, or an http(s)/file URL (optionally #sha256=...) fetched once into the cache
        net = load_model(resolve_weights(weights), name=model, scale=scale)
        return net, int(net.scale)
    name = model or DEFAULT_MODEL
    spec = get_spec(name)  # UnknownModel names the closest registered model
    s = int(scale or 4)
    if s not in spec.scales:
        raise ValueError(f"{name} upscales x{', x'.join(map(str, spec.scales))}, not x{s}")
    path = default_weights(name, s)
    if path is None:
        from lightsr.pretrained import available

        shipped = ", ".join(f"{n} x{k}" for n, k in available()) or "none"
        raise WeightsMissing(
            f"no pretrained weights ship for {name} x{s} (shipped: {shipped}): pass --weights FILE "
            f"(weights= in Python), a lightsr .safetensors or a BasicSR .pth checkpoint"
        )
    net = load_model(path, name=name, scale=s)
    return net, s


class _Bicubic:
    """Bicubic upscaling of a (C, h, w) tile (PyTorch's a = -0.75 kernel), clamped to [0, 1]."""

    def __init__(self, scale: int):
        self.scale = scale

    def __call__(self, tile: torch.Tensor) -> torch.Tensor:
        y = F.interpolate(tile[None], scale_factor=self.scale, mode="bicubic", align_corners=False)
        return y[0].clamp_(0, 1)


class _Quantiser:
    """Float in [0, 1] (any shape) -> the output dtype (rounded for integers)."""

    def __init__(self, out_dtype: np.dtype, maxval: float):
        self.out_dtype, self.maxval = out_dtype, maxval

    def __call__(self, v: torch.Tensor) -> np.ndarray:
        v = v.clamp(0, 1)
        if self.out_dtype == np.uint8:
            return v.mul_(self.maxval).round_().to(torch.uint8).numpy()
        if self.out_dtype == np.uint16:
            return v.mul_(self.maxval).round_().to(torch.int32).numpy().astype(np.uint16)
        return v.numpy().astype(self.out_dtype)


class _TileInput:
    """One (C, h, w) block of the input in its own dtype -> the model's (3, h, w) float32 RGB tile:
    scaled to [0, 1], gray replicated to RGB, colour premultiplied by alpha when needed."""

    def __init__(self, maxval: float, n_colour: int, premultiply: bool):
        self.maxval, self.n_colour, self.premultiply = maxval, n_colour, premultiply

    def __call__(self, block: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.array(block, dtype=np.float32))  # a copy: the caller's array is never touched
        if self.maxval != 1.0:
            x /= self.maxval
        rgb = x[: self.n_colour]
        if self.maxval == 1.0:
            rgb = rgb.clamp(0, 1)
        if self.n_colour == 1:
            rgb = rgb.expand(3, -1, -1)
        if self.premultiply:
            rgb = rgb * x[-1:].clamp(0, 1)
        return rgb.contiguous()


class _ColourSink:
    """Finished output rows (3, n, sW) -> ``out``: un-premultiplied, gray again, quantised, in chunks."""

    def __init__(self, out: np.ndarray, n_colour: int, maxval: float, premultiply: bool, quantise: _Quantiser):
        self.out, self.n_colour, self.maxval, self.premultiply, self.quantise = out, n_colour, maxval, premultiply, quantise
        self.luma = torch.tensor(_LUMA, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, y0: int, y1: int, band: torch.Tensor) -> None:
        out = self.out
        for c0 in range(0, y1 - y0, SINK_ROWS):  # in chunks: temporaries stay small
            c1 = min(c0 + SINK_ROWS, y1 - y0)
            rows = band[:, c0:c1]
            if self.premultiply:
                a_out = torch.from_numpy(out[y0 + c0 : y0 + c1, :, -1].astype(np.float32))
                if self.maxval != 1.0:
                    a_out /= self.maxval
                a_out = a_out[None]
                rows = torch.where(a_out > 0, rows / a_out.clamp_min(1e-12), torch.zeros(()))
            if self.n_colour == 1:
                rows = (rows.clamp(0, 1) * self.luma).sum(0, keepdim=True)
            out[y0 + c0 : y0 + c1, :, : self.n_colour] = self.quantise(rows.permute(1, 2, 0))


def _opaque(alpha: np.ndarray, maxval: float) -> bool:
    return bool(np.all(alpha >= maxval)) if maxval > 1 else bool(np.all(alpha >= 1.0))


def _max_value(dtype: np.dtype) -> float:
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    return 1.0


class Upscaler:
    """A loaded model plus the settings to upscale many images with it.

    Args:
        model: a model name, an ``nn.Module`` or ``None`` (:data:`lightsr.pretrained.DEFAULT_MODEL`).
        scale: upscaling factor (default: the model's / the weights').
        weights: weights file for a named model (see :func:`load_upscale_model`).
        tile: ``"auto"`` (from free memory; no tiling when the image fits), ``0``/``None`` (whole
            image) or a tile size in input pixels.
        tile_overlap: minimum overlap between neighbouring tiles (input pixels).
        precision: ``auto`` (default: bf16 on CPUs with native bf16 for weights measured to lose
            at most 0.02 dB in it, else fp32; see :mod:`lightsr.inference.policy`), ``fp32``,
            ``bf16`` or ``fp16`` (see :mod:`lightsr.inference.runner`). :attr:`precision_note`
            says what ``auto`` chose and why.
        device: ``auto`` / ``cpu`` / ``cuda`` / a torch.device.
        alpha: how the alpha channel is upscaled: ``bicubic`` (default) or ``model``.
        max_memory: bytes allowed for one tile's activations (default: 40% of free RAM, at most
            2 GiB, on the CPU; 80% of free GPU memory on CUDA).
        warn: callback for one-line warnings (default: :func:`warnings.warn`).
        cuda_graphs: on CUDA, replay each tile shape's forward from a CUDA graph (fewer kernel
            launches; the tile sizes repeat); ignored with a warning elsewhere.
    """

    def __init__(
        self,
        model: str | nn.Module | None = None,
        scale: int | None = None,
        *,
        weights: str | Path | None = None,
        tile: int | str | None = "auto",
        tile_overlap: int = DEFAULT_OVERLAP,
        precision: str = "auto",
        device: str | torch.device = "auto",
        alpha: str = "bicubic",
        max_memory: int | None = None,
        warn: Callable[[str], None] | None = None,
        cuda_graphs: bool = False,
    ):
        if alpha not in ALPHA_MODES:
            raise ValueError(f"alpha must be one of {ALPHA_MODES}, got {alpha!r}")
        if isinstance(tile, str) and tile != "auto":
            tile = int(tile)
        if isinstance(tile, int) and tile < 0:
            raise ValueError("tile must be 'auto', 0 (no tiling) or a positive size")
        if tile_overlap < 0:
            raise ValueError("tile_overlap must be >= 0")
        self.warn = warn or (lambda msg: warnings.warn(msg, stacklevel=3))
        net, self.scale = load_upscale_model(model, scale, weights)
        self.precision_note: str | None = None
        if precision == "auto":
            precision, self.precision_note = auto_precision(resolve_device(device), getattr(net, "lightsr_source", None))
        self.runner = ModelRunner(net, self.scale, device, precision, warn=self.warn, cuda_graphs=cuda_graphs)
        self.model = self.runner.model
        self.tile = tile
        self.tile_overlap = int(tile_overlap)
        self.alpha = alpha
        self.max_memory = max_memory
        self.last_tile: int | None = None  # tile size used for the last image (None = whole image)
        self._seconds_per_pixel: float | None = None  # measured speed, for ETAs

    @property
    def device(self) -> torch.device:
        return self.runner.device

    # -- tiling ---------------------------------------------------------------------------------
    def _tile_for(self, h: int, w: int) -> int | None:
        if self.tile == "auto":
            budget = self.max_memory if self.max_memory is not None else default_budget(self.device)
            return auto_tile(self.runner, h, w, budget, channels=3)
        return int(self.tile) or None

    def _run(self, fn, x: torch.Tensor, sink, tile: int | None, on_tile) -> int | None:
        """run_tiled with retries on out-of-memory (tile halved each time, down to 16 pixels)."""
        _, h, w = x.shape
        while True:
            try:
                run_tiled(fn, x, self.scale, sink, tile=tile, overlap=self.tile_overlap, on_tile=on_tile)
                return tile
            except OutOfMemory as exc:
                current = tile or max(h, w)
                smaller = current // 2 // 8 * 8
                if smaller < 16:
                    raise MemoryError(f"out of memory even with {current}-pixel tiles ({exc})") from None
                self.warn(f"out of memory with {'the whole image' if not tile else f'{tile}-pixel tiles'}: retrying with {smaller}-pixel tiles")
                tile = smaller

    # -- pixels -------------------------------------------------------------------------------
    def upscale_pixels(self, pixels: np.ndarray, on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
        """(H, W, C) uint8 / uint16 / float -> (sH, sW, C) of the same dtype (C = 1, 2, 3 or 4).

        Raises :class:`~lightsr.inference.runner.NonFiniteOutput` when the model returns NaN/Inf."""
        if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
            raise ValueError(f"expected (H, W, C) pixels with C in 1..4, got shape {pixels.shape}")
        if pixels.dtype not in (np.uint8, np.uint16) and not np.issubdtype(pixels.dtype, np.floating):
            raise ValueError(f"unsupported pixel dtype {pixels.dtype} (use uint8, uint16 or float)")
        h, w, c = pixels.shape
        if h == 0 or w == 0:
            raise ValueError(f"cannot upscale an empty {w}x{h} image")
        maxval = _max_value(pixels.dtype)
        out_dtype = pixels.dtype if pixels.dtype in (np.uint8, np.uint16, np.float64) else np.dtype(np.float32)
        out = np.empty((h * self.scale, w * self.scale, c), dtype=out_dtype)
        quantise = _Quantiser(out_dtype, maxval)
        n_colour = c - 1 if c in (2, 4) else c
        planes = pixels.transpose(2, 0, 1)  # (C, H, W) view: each tile is converted on its own
        tile = self._tile_for(h, w)
        premultiply = False
        if c in (2, 4):
            premultiply = not _opaque(pixels[..., -1], maxval)
            if premultiply:
                self._upscale_alpha(planes[-1:], maxval, out, quantise, tile)
            else:
                out[..., -1] = 1.0 if np.issubdtype(out_dtype, np.floating) else maxval
        prepare = _TileInput(maxval, n_colour, premultiply)

        def colour(block: np.ndarray) -> torch.Tensor:
            return self.runner(prepare(block))

        sink = _ColourSink(out, n_colour, maxval, premultiply, quantise)
        t0 = time.perf_counter()
        self.last_tile = self._run(colour, planes, sink, tile, on_tile)
        if h * w >= 64 * 64:
            self._seconds_per_pixel = (time.perf_counter() - t0) / (h * w)
        return out

    def _upscale_alpha(self, plane: np.ndarray, maxval: float, out: np.ndarray, quantise, tile: int | None) -> None:
        """Upscale the alpha plane (1, H, W) into ``out[..., -1]`` (bicubic, or the model with ``alpha="model"``)."""

        def prepare(block: np.ndarray) -> torch.Tensor:
            a = torch.from_numpy(np.array(block, dtype=np.float32))
            if maxval != 1.0:
                a /= maxval
            return a.clamp_(0, 1)

        def sink(y0, y1, band):
            for c0 in range(0, y1 - y0, SINK_ROWS):
                rows = band[:, c0 : c0 + SINK_ROWS]
                v = rows.mean(0) if rows.shape[0] > 1 else rows[0]
                out[y0 + c0 : y0 + c0 + v.shape[0], :, -1] = quantise(v)

        if self.alpha == "model":
            self._run(lambda b: self.runner(prepare(b).expand(3, -1, -1)), plane, sink, tile, None)
        else:
            bicubic = _Bicubic(self.scale)
            self._run(lambda b: bicubic(prepare(b)), plane, sink, 512, None)

    def estimate_seconds(self, height: int, width: int) -> float:
        """About how long one ``height x width`` image takes: from the last image of this Upscaler,
        else from a timed 64x64 probe (for an ETA before a whole-image pass, which reports no tiles)."""
        if self._seconds_per_pixel is None:
            probe = torch.rand(3, 64, 64)
            self.runner(probe)  # warm-up (first-call costs)
            t0 = time.perf_counter()
            self.runner(probe)
            self._seconds_per_pixel = (time.perf_counter() - t0) / (64 * 64)
        return self._seconds_per_pixel * height * width

    def upscale_image(self, image: ImageData, on_tile: Callable[[int, int], None] | None = None) -> ImageData:
        """Upscale decoded image data, keeping its ICC profile and EXIF."""
        return with_pixels(image, self.upscale_pixels(image.pixels, on_tile=on_tile))

    # -- any kind of image ---------------------------------------------------------------------
    def __call__(self, image: Any, on_tile: Callable[[int, int], None] | None = None) -> Any:
        """PIL image, NumPy array or torch tensor in -> the same kind out (see :func:`upscale`)."""
        from PIL import Image

        if isinstance(image, Image.Image):
            return self._upscale_pil(image, on_tile)
        if isinstance(image, np.ndarray):
            return self._upscale_numpy(image, on_tile)
        if isinstance(image, torch.Tensor):
            return self._upscale_tensor(image, on_tile)
        if isinstance(image, (str, Path)):
            raise TypeError("upscale() takes an image, not a path: use lightsr.inference.read_image(path) or the CLI")
        raise TypeError(f"cannot upscale a {type(image).__name__}: pass a PIL image, a NumPy array or a torch tensor")

    def _upscale_pil(self, im, on_tile):
        from lightsr.inference.io import to_pil

        pixels, _ = from_pil(im)
        out = self.upscale_pixels(pixels, on_tile)
        c = out.shape[2]
        if out.dtype == np.uint16 and c > 1:  # cannot happen for in-memory images (8-bit colour in Pillow)
            out = (out // 257).astype(np.uint8)
        result = to_pil(out)
        if im.mode == "I" and result.mode == "I;16":
            result = result.convert("I")
        icc = im.info.get("icc_profile")
        if icc:
            result.info["icc_profile"] = icc
        return result

    def _upscale_numpy(self, arr: np.ndarray, on_tile):
        if arr.ndim == 2:
            return self.upscale_pixels(arr[..., None], on_tile)[..., 0]
        if arr.ndim == 3 and arr.shape[2] in (1, 2, 3, 4):
            return self.upscale_pixels(arr, on_tile)
        raise ValueError(f"expected an array of shape (H, W) or (H, W, C) with C in 1..4, got {arr.shape}")

    def _upscale_tensor(self, t: torch.Tensor, on_tile):
        if t.dim() == 4:
            return torch.stack([self._upscale_tensor(one, on_tile) for one in t])
        if t.dim() == 2:
            return self._upscale_tensor(t[None], on_tile)[0]
        if t.dim() != 3 or t.shape[0] not in (1, 2, 3, 4):
            raise ValueError(f"expected a (C, H, W) or (B, C, H, W) tensor with C in 1..4, got {tuple(t.shape)}")
        if t.dtype == torch.uint8:
            arr = t.detach().cpu().permute(1, 2, 0).numpy()
        elif t.is_floating_point():
            arr = t.detach().cpu().float().permute(1, 2, 0).numpy()
        else:
            raise ValueError(f"unsupported tensor dtype {t.dtype} (use uint8 or a float type)")
        out = self.upscale_pixels(np.ascontiguousarray(arr), on_tile)
        return torch.from_numpy(out).permute(2, 0, 1).contiguous().to(device=t.device, dtype=t.dtype)


def upscale(
    image: Any,
    model: str | nn.Module | None = None,
    scale: int | None = None,
    *,
    weights: str | Path | None = None,
    tile: int | str | None = "auto",
    tile_overlap: int = DEFAULT_OVERLAP,
    precision: str = "auto",
    device: str | torch.device = "auto",
    alpha: str = "bicubic",
    max_memory: int | None = None,
) -> Any:
    """Upscale one image and return the same kind of object.

    Args:
        image: a PIL image (L, LA, RGB, RGBA, P, 1, I;16 ...), a NumPy array ``(H, W)`` or
            ``(H, W, C)`` with C = 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA) of dtype uint8,
            uint16 or float (values in [0, 1]), or a torch tensor ``(C, H, W)`` / ``(B, C, H, W)``
            (float in [0, 1] or uint8).
        model: a model name (default :data:`lightsr.pretrained.DEFAULT_MODEL`) or an ``nn.Module``
            mapping RGB (B, 3, h, w) in [0, 1] to (B, 3, s*h, s*w).
        scale: upscaling factor (default: the model's, the weights', or 4).
        weights: weights for a named model; without it the shipped weights are used, and a model
            with no shipped weights raises :class:`WeightsMissing`.
        tile, tile_overlap, precision, device, alpha, max_memory: see :class:`Upscaler`.

    Returns:
        PIL image (same mode; P becomes RGB/RGBA, 1 becomes L), NumPy array (same dtype and
        layout) or tensor (same dtype and device), ``scale`` times larger. Float results are
        clamped to [0, 1].

    To upscale many images, build one :class:`Upscaler` and call it: the model is loaded once.
    """
    up = Upscaler(model, scale, weights=weights, tile=tile, tile_overlap=tile_overlap, precision=precision,
                  device=device, alpha=alpha, max_memory=max_memory)
    return up(image)

