"""The bicubic baseline on Set5 / Set14 / B100 at x2 / x3 / x4 under every scoring-convention variant,
next to the published bicubic rows (design/conventions.md §2d; VDSR's table, repeated by every paper).

Variants (all with MATLAB-exact imresize, LR = imresize(modcrop(HR, s), 1/s), border = s):
  channel   rgb: upscale the RGB LR, then score Y  |  y: degrade and upscale only the Y channel (SRCNN/VDSR)
  output    uint8: bicubic SR rounded to uint8 (MATLAB imresize of a uint8 image)  |  float: unrounded
  round_y   Y rounded to integers (MATLAB rgb2ycbcr on uint8) or not (BasicSR)
  gray      Set14 'bridge' (the only gray image): rgb = replicated to R=G=B, y = scored on its gray values

    python benchmarks/eval_bicubic_conventions.py --data ../shared/datasets/benchmark

Prints a Markdown table (paste into docs/evaluation.md) and exits 1 if the `matlab-y` preset misses any
published value by more than 0.01 dB PSNR or 0.001 SSIM.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time

import torch

from lightsr.data.benchmark import find_benchmark
from lightsr.evaluation import CONVENTIONS, Convention, evaluate

PUBLISHED = {  # (set, scale): (PSNR, SSIM)
    ("Set5", 2): (33.66, 0.9299), ("Set5", 3): (30.39, 0.8682), ("Set5", 4): (28.42, 0.8104),
    ("Set14", 2): (30.24, 0.8688), ("Set14", 3): (27.55, 0.7742), ("Set14", 4): (26.00, 0.7027),
    ("B100", 2): (29.56, 0.8431), ("B100", 3): (27.21, 0.7385), ("B100", 4): (25.96, 0.6675),
}
SETS = ("Set5", "Set14", "B100")
SCALES = (2, 3, 4)
TOL_PSNR, TOL_SSIM = 0.01, 0.001


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder with Set5, Set14, B100 (EDSR benchmark layout)")
    ap.add_argument("--cache-dir", help="cache for generated LR (default: lightsr's)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    datasets = {(n, s): find_benchmark(args.data, n, s, cache_dir=args.cache_dir) for n in SETS for s in SCALES}
    variants = []
    for channel, output, round_y, gray in itertools.product(("rgb", "y"), ("uint8", "float"), (False, True), ("rgb", "y")):
        variants.append(Convention(round_y=round_y, gray=gray, bicubic_output=output, bicubic_channel=channel))
    names = {v: k for k, v in CONVENTIONS.items()}

    cols = [f"{n} x{s}" for n in SETS for s in SCALES]
    print("| channel | output | Y | gray | " + " | ".join(cols) + " | max abs diff | all nine |")
    print("|---|---|---|---|" + "---|" * len(cols) + "---|---|")
    print("| published | | | | " + " | ".join(f"{PUBLISHED[(n, s)][0]:.2f}/{PUBLISHED[(n, s)][1]:.4f}"
                                             for n in SETS for s in SCALES) + " | | |")
    status = 0
    for conv in variants:
        cells, dp, ds = [], 0.0, 0.0
        for n in SETS:
            for s in SCALES:
                r = evaluate("bicubic", [datasets[(n, s)]], scale=s, convention=conv, progress=False)
                p, q = r.sets[0].psnr, r.sets[0].ssim
                pp, ps = PUBLISHED[(n, s)]
                dp, ds = max(dp, abs(p - pp)), max(ds, abs(q - ps))
                cells.append(f"{p:.3f}/{q:.4f}")
        ok = dp <= TOL_PSNR and ds <= TOL_SSIM
        preset = names.get(conv)
        label = f"**{preset}**: " if preset else ""
        print(f"| {label}{conv.bicubic_channel} | {conv.bicubic_output} | {'rounded' if conv.round_y else 'unrounded'} "
              f"| {conv.gray} | " + " | ".join(cells) + f" | {dp:.3f} dB / {ds:.4f} | {'yes' if ok else 'no'} |")
        sys.stdout.flush()
        if preset == "matlab-y" and not ok:
            status = 1
    print(f"\n(PSNR with 3 decimals / SSIM; published = 2 / 4 decimals; tolerance {TOL_PSNR} dB / {TOL_SSIM}; "
          f"{time.time() - t0:.0f} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
