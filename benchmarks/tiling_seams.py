"""Tiled vs whole-image upscaling, per model: how invisible are the seams?

For each model (x4 by default), the same input is upscaled once as a whole and once in
overlapping tiles (lightsr's smooth blending), both quantised to 8 bits as ``lightsr upscale``
writes them, and compared: PSNR (RGB, no border crop) and the largest difference in 8-bit levels.

Weights: by default every model is **randomly initialised with a fixed seed**
(``torch.manual_seed(0)``), all six at any scale. Random and trained weights use their global
operators differently, so for the models with global context these rows are not a prediction for
trained weights (with the shipped DLGSANet-tiny x4 weights the difference is far smaller than with
random ones; docs/upscale.md has both). The mechanism rows (TLC off, IEM off, local-only HDTB) isolate *which* operator causes it.

Input: a crop of Set14 ``comic`` from ../shared when present (else a synthetic textured image),
downscaled to the LR size with bicubic.

    python benchmarks/tiling_seams.py                    # all six models + mechanism rows
    python benchmarks/tiling_seams.py --size 96 --tile 48 --overlap 16 --models lamnet
    python benchmarks/tiling_seams.py --weights src/lightsr/pretrained/dlgsanet_tiny_x4.safetensors

``--weights FILE`` (repeatable) runs trained weights instead of the random-init rows; the tiling
difference of a trained model with global operators is the number that matters to users.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import lightsr
from lightsr.inference import Upscaler

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# (label, model name, options, what it shows)
ROWS = [
    ("dlgsanet_tiny", "dlgsanet_tiny", {}, "SparseGSA with TLC windows (default eval mode)"),
    ("dlgsanet_light", "dlgsanet_light", {}, "SparseGSA with TLC windows (default eval mode)"),
    ("dlgsanet", "dlgsanet", {}, "SparseGSA with TLC windows (default eval mode)"),
    ("lgun", "lgun", {}, "DGSA global channel attention + SE global pooling in every FFN"),
    ("lamnet", "lamnet", {}, "IEM global means in every ULM"),
    ("lamnet_large", "lamnet_large", {}, "IEM global means in every ULM"),
    ("dlgsanet_light tlc=False", "dlgsanet_light", {"tlc": False}, "SparseGSA over the whole tile/image"),
    ("dlgsanet_light local_local", "dlgsanet_light", {"hdtb": "local_local"}, "no global attention: purely local"),
    ("lamnet iem=False", "lamnet", {"iem": False}, "no IEM: purely local"),
]


def load_input(size: int) -> np.ndarray:
    path = SHARED / "datasets" / "benchmark" / "Set14" / "HR" / "comic.png"
    if path.is_file():
        from PIL import Image

        hr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
        src = "Set14 comic"
    else:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[: 4 * size, : 4 * size] / (4 * size)
        base = np.stack([np.sin(9 * xx + 3 * yy), np.cos(7 * yy - 2 * xx), np.sin(5 * xx * yy + 1)], -1) * 0.35 + 0.5
        hr = np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1).astype(np.float32)
        src = "synthetic"
    t = torch.from_numpy(np.ascontiguousarray(hr)).permute(2, 0, 1)[None]
    side = min(t.shape[-2:])
    t = t[..., :side, :side]
    lr = F.interpolate(t, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    print(f"input: {src}, {size}x{size} LR")
    return np.clip(np.rint(lr[0].permute(1, 2, 0).numpy() * 255), 0, 255).astype(np.uint8)


def psnr8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128, help="LR input side (default 128)")
    ap.add_argument("--tile", type=int, default=64, help="tile side (default 64)")
    ap.add_argument("--overlap", type=int, default=32, help="tile overlap (default 32, the CLI default)")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--models", nargs="*", default=None, help="labels (or model names) to run; default all rows")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--weights", action="append", default=[], metavar="FILE",
                    help="trained weights to compare (repeatable; replaces the random-init rows)")
    ap.add_argument("--tlc", choices=("on", "off"), default=None,
                    help="DLGSANet weights: force the test-time local converter (default: as the file says)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    image = load_input(args.size)
    rows = [r for r in ROWS if not args.models or r[0] in args.models or r[1] in args.models]
    if args.weights:
        rows = [(Path(w).name, w, None, "trained weights") for w in args.weights]
    weights_note = "trained weights" if args.weights else "random-init weights, seed 0"
    print(f"x{args.scale}, tiles {args.tile}x{args.tile} with overlap {args.overlap}; {weights_note}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':28s} {'PSNR dB':>8s} {'max diff':>9s} {'>1 level':>9s} {'whole s':>8s} {'tiled s':>8s}  global operator")
    for label, name, options, what in rows:
        torch.manual_seed(0)
        if options is None:  # a weights file
            model = lightsr.load_model(name)
            what = f"trained {model.lightsr_config['name']} x{model.scale}"
            if hasattr(model, "set_tlc"):
                if args.tlc:
                    model.set_tlc(args.tlc == "on")
                what += f", TLC {'on' if model.tlc_enabled else 'off'}"
        else:
            model = lightsr.create_model(name, args.scale, **options).eval()
        whole_up = Upscaler(model, tile=0, device="cpu")
        tiled_up = Upscaler(model, tile=args.tile, tile_overlap=args.overlap, device="cpu")
        t0 = time.perf_counter()
        whole = whole_up(image)
        t1 = time.perf_counter()
        tiled = tiled_up(image)
        t2 = time.perf_counter()
        diff = np.abs(whole.astype(np.int16) - tiled.astype(np.int16))
        frac = float((diff > 1).mean())
        print(f"{label:28s} {psnr8(whole, tiled):8.2f} {int(diff.max()):9d} {frac:9.2%} {t1 - t0:8.1f} {t2 - t1:8.1f}  {what}",
              flush=True)


if __name__ == "__main__":
    main()
