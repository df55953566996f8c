"""Upscaling real images: the :func:`upscale` API and the :class:`Upscaler` behind ``lightsr upscale``.

>>> import lightsr
>>> from PIL import Image
>>> out = lightsr.upscale(Image.open("photo.png"), weights="dlgsanet_tiny_x4.safetensors")

What happens to an image (details in ``docs/upscale.md``):

* colour goes through the model as RGB in [0, 1]; grayscale is replicated to RGB and the result
  converted back to one channel (BT.601 luma weights), so gray stays gray;
* with an alpha channel, the colour is **premultiplied** by alpha before upscaling and divided by
  the upscaled alpha afterwards (no dark fringes from transparent pixels' colour); the alpha is
  upscaled separately - bicubic by default (``alpha="model"`` runs the model on it, replicated to
  three channels) - and an alpha that is fully opaque stays exactly opaque;
* 16-bit samples are fed to the model as float values of the full 16-bit range and written back
  as 16 bits; float input stays float (clamped to [0, 1]);
* large images are processed in overlapping tiles blended with smooth weights (see
  :mod:`lightsr.inference.tiling`); the tile size is chosen from the free memory (a container's
  cgroup limit included), and halved on out-of-memory;
* an output holding NaN or Inf raises :class:`NonFiniteOutput` - it is never returned.

Modules: :mod:`~lightsr.inference.upscaler` (:class:`Upscaler`, :func:`upscale`),
:mod:`~lightsr.inference.io` (reading and writing image files), :mod:`~lightsr.inference.runner`
(device, precision, memory), :mod:`~lightsr.inference.tiling`, :mod:`~lightsr.inference.progress`
(elapsed time and ETA with or without a terminal), :mod:`~lightsr.inference.partfiles` (atomic
writes' temporary files).
"""
from __future__ import annotations

from lightsr.inference.io import ImageData, ImageError, read_image, write_image
from lightsr.inference.runner import NonFiniteOutput
from lightsr.inference.upscaler import DEFAULT_OVERLAP, Upscaler, WeightsMissing, load_upscale_model, upscale

__all__ = [
    "DEFAULT_OVERLAP",
    "ImageData",
    "ImageError",
    "NonFiniteOutput",
    "Upscaler",
    "WeightsMissing",
    "load_upscale_model",
    "read_image",
    "upscale",
    "write_image",
]
