"""``lightsr compare``: a papers-style qualitative figure - the HR image with the region of interest
boxed, and zoomed crops of that region from the HR, bicubic and each model, labelled with PSNR/SSIM.

The functions :func:`make_comparison` and :func:`pick_box` can be used from Python as well.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EPILOG = """\
examples:
  # the figure in docs/figures: Set14 comic at x4, bicubic vs IMDN vs PAN
  lightsr compare ../shared/datasets/benchmark/Set14/HR/comic.png --scale 4 \\
      --model bicubic --model imdn:../shared/weights/IMDN/IMDN_x4.pth \\
      --model pan:../shared/weights/PAN/PANx4_DF2K.pth -o compare_comic_x4.png

  # choose the region yourself (HR pixels: left top width height) and the zoom tile size
  lightsr compare HR.png --scale 2 --model bicubic --model W.safetensors --box 120 40 48 48 --tile-size 240

--model takes: bicubic | NAME (weights shipped with lightsr) | NAME:WEIGHTS | WEIGHTS (architecture
recognised from the file). Without --lr the LR input is made from the HR with MATLAB-exact bicubic
(after modcrop), as the benchmarks are. Without --box the region where bicubic loses most (highest
error) is chosen. PSNR/SSIM under each crop are whole-image values (Y, border = scale, as in tables).
"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "compare",
        help="side-by-side zoomed crops (HR, bicubic, models) of one image, as a PNG",
        description="Make a qualitative comparison figure like those of SR papers: the HR image with a "
        "box, and enlarged crops of the box from the HR, bicubic and every model given, each labelled "
        "with its PSNR/SSIM on the whole image.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", help="HR (ground-truth) image")
    p.add_argument("--scale", type=int, required=True, choices=(2, 3, 4), help="SR factor")
    p.add_argument("--model", action="append", dest="models", metavar="SPEC", required=True,
                   help="bicubic | NAME | NAME:WEIGHTS | WEIGHTS (repeat for several)")
    p.add_argument("--labels", nargs="+", metavar="TEXT", help="labels for the --model entries, in order")
    p.add_argument("--lr", metavar="FILE", help="LR input (default: MATLAB bicubic of the modcropped HR)")
    p.add_argument("--box", nargs=4, type=int, metavar=("LEFT", "TOP", "WIDTH", "HEIGHT"),
                   help="region to zoom, in HR pixels (default: where bicubic errs most)")
    p.add_argument("--box-size", type=int, metavar="N", help="side of the automatic box in HR pixels "
                   "(default: a quarter of the shorter side)")
    p.add_argument("--tile-size", type=int, default=200, metavar="PX", help="side of each zoomed tile (200)")
    p.add_argument("--columns", type=int, metavar="N", help="tiles per row (default: half of them, rounded up)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-download", metavar="SIZE", help="largest downloaded weights accepted, e.g. 500M (default 1G)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.add_argument("-o", "--output", required=True, metavar="PNG", help="output PNG (written atomically)")
    return p


@dataclass
class Panel:
    label: str
    image: np.ndarray  # uint8 HxWx3 at HR size
    caption: str = ""


def pick_box(hr: np.ndarray, reference: np.ndarray, size: int, stride: int | None = None) -> tuple[int, int, int, int]:
    """The ``size`` x ``size`` window (left, top, w, h) where ``reference`` differs most from ``hr`` (MSE)."""
    h, w = hr.shape[:2]
    size = max(8, min(size, h, w))
    err = ((hr.astype(np.float64) - reference.astype(np.float64)) ** 2).mean(axis=2)
    integral = np.pad(err.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    stride = stride or max(1, size // 8)
    best, best_xy = -1.0, (0, 0)
    for top in range(0, h - size + 1, stride):
        for left in range(0, w - size + 1, stride):
            s = (integral[top + size, left + size] - integral[top, left + size]
                 - integral[top + size, left] + integral[top, left])
            if s > best:
                best, best_xy = s, (left, top)
    return best_xy[0], best_xy[1], size, size


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def make_comparison(hr: np.ndarray, panels: list[Panel], box: tuple[int, int, int, int], *, tile_size: int = 200,
                    columns: int | None = None, title: str | None = None):
    """Compose the figure: overview of ``hr`` with ``box`` drawn, then a grid of zoomed crops of every panel."""
    from PIL import Image, ImageDraw

    left, top, bw, bh = box
    n = len(panels)
    columns = columns or max(1, (n + 1) // 2)
    rows = (n + columns - 1) // columns
    font = _font(max(12, tile_size // 12))
    pad, text_h = 8, max(16, tile_size // 12) * 2 + 10
    tile_w = tile_size
    tile_h = int(round(tile_size * bh / bw))
    grid_h = rows * (tile_h + text_h) + (rows - 1) * pad
    ov_h = grid_h
    ov_w = int(round(hr.shape[1] * ov_h / hr.shape[0]))
    title_h = (max(16, tile_size // 12) + 12) if title else 0
    width = pad + ov_w + pad + columns * tile_w + (columns - 1) * pad + pad
    height = title_h + pad + grid_h + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad // 2), title, fill="black", font=font)
    y0 = title_h + pad
    overview = Image.fromarray(hr).resize((ov_w, ov_h), Image.LANCZOS)
    canvas.paste(overview, (pad, y0))
    sx, sy = ov_w / hr.shape[1], ov_h / hr.shape[0]
    lw = max(2, tile_size // 80)
    draw.rectangle([pad + left * sx, y0 + top * sy, pad + (left + bw) * sx, y0 + (top + bh) * sy], outline=(230, 0, 0), width=lw)
    x_grid = pad + ov_w + pad
    for i, panel in enumerate(panels):
        r, c = divmod(i, columns)
        x = x_grid + c * (tile_w + pad)
        y = y0 + r * (tile_h + text_h + pad)
        crop = Image.fromarray(panel.image[top : top + bh, left : left + bw])
        canvas.paste(crop.resize((tile_w, tile_h), Image.NEAREST), (x, y))
        draw.rectangle([x, y, x + tile_w - 1, y + tile_h - 1], outline=(230, 0, 0), width=1)
        for j, line in enumerate((panel.label, panel.caption)):
            if not line:
                continue
            tw = draw.textlength(line, font=font)
            draw.text((x + (tile_w - tw) / 2, y + tile_h + 4 + j * (text_h // 2)), line, fill="black", font=font)
    return canvas


def _load_models(specs: list[str], scale: int, *, progress: bool = True, max_bytes: int | None = None):
    import lightsr
    from lightsr.evaluation import Bicubic
    from lightsr.models import get_spec
    from lightsr.pretrained import default_weights, resolve_weights

    out = []
    for spec in specs:
        if spec.lower() == "bicubic":
            out.append(("Bicubic", Bicubic(scale)))
            continue
        name, weights = None, None
        if spec.startswith(("http://", "https://", "file://")) or Path(spec).exists():
            weights = spec
        elif ":" in spec:
            name, weights = spec.split(":", 1)
        else:
            name = spec
        if name is not None:
            try:
                get_spec(name)
            except KeyError as exc:
                raise ValueError(str(exc).strip("'\"")) from None
        if weights is None:
            weights = default_weights(name, scale)
            if weights is None:
                raise ValueError(f"no pretrained weights are shipped for {name} x{scale}; use {name}:WEIGHTS")
        else:
            try:
                weights = resolve_weights(weights, name, scale, progress=progress, max_bytes=max_bytes)
            except OSError as exc:  # FileNotFoundError included
                raise ValueError(str(exc)) from None
        model = lightsr.load_model(weights, name=name, scale=scale)
        label = model.lightsr_config["name"]
        out.append(({"imdn": "IMDN", "pan": "PAN"}.get(label, label), model))
    return out


def _read_inputs(args) -> tuple[np.ndarray, np.ndarray]:
    """(HR, LR) as uint8 RGB: the LR from --lr or made from the HR with MATLAB-exact bicubic."""
    from lightsr.data.benchmark import read_image
    from lightsr.data.imresize import imresize, modcrop

    s = args.scale
    hr, _ = read_image(args.image)
    if args.lr:
        lr, _ = read_image(args.lr)
        hr = hr[: lr.shape[0] * s, : lr.shape[1] * s]
        if hr.shape[0] != lr.shape[0] * s or hr.shape[1] != lr.shape[1] * s:
            raise ValueError(f"--lr {args.lr} ({lr.shape[1]}x{lr.shape[0]}) times {s} is larger than the HR image")
    else:
        hr = modcrop(hr, s)
        if min(hr.shape[:2]) < s:
            raise ValueError(f"{args.image}: smaller than {s}x{s} pixels")
        lr = imresize(hr, 1 / s)
    if hr.ndim == 2:
        hr = np.repeat(hr[..., None], 3, axis=2)
    if lr.ndim == 2:
        lr = np.repeat(lr[..., None], 3, axis=2)
    return hr, lr


def _super_resolve(models, lr: np.ndarray, hr: np.ndarray, args) -> tuple[list[Panel], np.ndarray]:
    """One panel per model, with progress (elapsed time and ETA) while the models run."""
    import torch

    from lightsr.data.imresize import imresize
    from lightsr.evaluation import Bicubic
    from lightsr.inference.progress import Progress
    from lightsr.metrics import psnr, ssim, to_uint8

    s = args.scale
    x = torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1)))[None].float().div(255).to(args.device)
    bicubic_img = imresize(lr, s)
    panels = []
    with Progress(len(models), "compare: models", unit="model", enabled=not args.quiet) as bar:
        for i, (label, model) in enumerate(models):
            bar.set_postfix(label)
            if isinstance(model, Bicubic):
                sr = bicubic_img
            else:
                with torch.inference_mode():
                    y = model.to(args.device).eval()(x)
                if not bool(torch.isfinite(y).all()):
                    raise ValueError(f"{label}: the model's output holds NaN/Inf values (broken weights); no figure written")
                sr = to_uint8(y[0, :, : hr.shape[0], : hr.shape[1]])
            caption = f"{psnr(sr, hr, s):.2f} dB / {ssim(sr, hr, s):.4f}"
            panels.append(Panel(args.labels[i] if args.labels else label, sr, caption))
            bar.update()
    return panels, bicubic_img


def run(args: argparse.Namespace) -> int:
    from lightsr.inference.io import atomic_output
    from lightsr.pretrained import parse_size
    from lightsr.weights import CheckpointError

    s = args.scale
    out = Path(args.output)
    if out.resolve() == Path(args.image).resolve() or (args.lr and out.resolve() == Path(args.lr).resolve()):
        print("lightsr compare: error: refusing to overwrite an input image", file=sys.stderr)
        return 2
    try:
        limit = parse_size(args.max_download) if args.max_download else None
        hr, lr = _read_inputs(args)
        models = _load_models(args.models, s, progress=not args.quiet, max_bytes=limit)
    except (ValueError, CheckpointError, FileNotFoundError) as exc:
        print(f"lightsr compare: error: {exc}", file=sys.stderr)
        return 2
    if args.labels and len(args.labels) != len(models):
        print(f"lightsr compare: error: {len(args.labels)} labels for {len(models)} models", file=sys.stderr)
        return 2
    if args.box:
        box = tuple(args.box)
        if box[0] < 0 or box[1] < 0 or box[0] + box[2] > hr.shape[1] or box[1] + box[3] > hr.shape[0] or min(box[2:]) < 2:
            print(f"lightsr compare: error: --box {box} is outside the {hr.shape[1]}x{hr.shape[0]} image", file=sys.stderr)
            return 2
    try:
        sr_panels, bicubic_img = _super_resolve(models, lr, hr, args)
    except ValueError as exc:
        print(f"lightsr compare: error: {exc}", file=sys.stderr)
        return 1
    panels = [Panel("HR", hr, "PSNR / SSIM"), *sr_panels]
    if not args.box:
        box = pick_box(hr, bicubic_img, args.box_size or min(hr.shape[:2]) // 4)
    title = f"{Path(args.image).stem} x{s}: region {box[2]}x{box[3]} at ({box[0]}, {box[1]}); whole-image Y PSNR / SSIM"
    fig = make_comparison(hr, panels, box, tile_size=args.tile_size, columns=args.columns, title=title)
    with atomic_output(out, overwrite=True) as f:
        fig.save(f, format="PNG")
    print(f"wrote {out} ({fig.width}x{fig.height}; box {box})")
    return 0
