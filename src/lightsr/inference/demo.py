"""The quick-start demo: upscale the bundled sample image and show it next to bicubic.

``lightsr upscale --demo`` (or :func:`run_demo`) reads ``lightsr/assets/chelsea.png`` (a small
photo of a cat, CC0; see ``lightsr/assets/LICENSE.md``), upscales it with the default model and its
shipped weights, and writes two files:

* ``<outdir>/chelsea_x<scale>.png``: the upscaled image;
* ``<outdir>/chelsea_x<scale>_compare.png``: the result with a box on the region where the model
  and bicubic differ most, and enlarged crops of that region from the input (nearest neighbour),
  bicubic and the model, side by side.

There is no ground truth for a real input: the comparison is for looking, no PSNR is printed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["SAMPLE", "run_demo"]

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "chelsea.png"


def run_demo(outdir: str | Path = "lightsr-demo", *, model: str | None = None, scale: int | None = 4,
             overwrite: bool = True, device: str = "auto", threads: int | None = None,
             **upscaler_options) -> tuple[Path, Path]:
    """Upscale the bundled sample; returns (upscaled PNG, comparison PNG).

    ``scale=None`` takes the scale of ``weights=``; ``upscaler_options`` (``weights``, ``tile``,
    ``tile_overlap``, ``precision``, ``max_memory``) go to :class:`lightsr.inference.Upscaler`."""
    import torch

    from lightsr.cli.compare import Panel, make_comparison, pick_box
    from lightsr.data.imresize import imresize
    from lightsr.inference import Upscaler
    from lightsr.inference.io import read_image, write_image

    if threads:
        torch.set_num_threads(threads)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    if scale is None and upscaler_options.get("weights") is None:
        scale = 4
    upscaler = Upscaler(model, scale, device=device, **upscaler_options)
    scale = upscaler.scale
    name = upscaler.model.lightsr_config["name"]
    data = read_image(SAMPLE)
    result = upscaler.upscale_image(data)
    out_path = outdir / f"{SAMPLE.stem}_x{scale}.png"
    write_image(out_path, result, "png", overwrite=overwrite)

    lr, sr = data.pixels, result.pixels  # the sample is 8-bit RGB: (h, w, 3) uint8 in and out
    bic = imresize(lr, float(scale))
    near = np.repeat(np.repeat(lr, scale, axis=0), scale, axis=1)
    size = max(24, min(sr.shape[:2]) // 4)
    box = pick_box(sr, bic, size)
    panels = [Panel("input (nearest)", near), Panel("bicubic", bic), Panel(f"lightsr {name}", sr)]
    figure = make_comparison(sr, panels, box, tile_size=240, columns=3,
                             title=f"{SAMPLE.name} {lr.shape[1]}x{lr.shape[0]} -> x{scale} with {name}")
    cmp_path = outdir / f"{SAMPLE.stem}_x{scale}_compare.png"
    tmp = cmp_path.with_name(f".{cmp_path.name}.tmp")
    figure.save(tmp, format="PNG")
    tmp.replace(cmp_path)
    return out_path, cmp_path
