"""``lightsr prepare``: cut large HR training images into sub-images with aligned MATLAB-bicubic LR."""
from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  lightsr prepare datasets/DIV2K/DIV2K_train_HR --scales 2 3 4
        writes datasets/DIV2K/DIV2K_train_HR_sub/0001_s001.png ... and
        datasets/DIV2K/DIV2K_train_LR_bicubic/X2_sub/0001_s001.png ... (X3_sub, X4_sub): the folders
        the paper configs in configs/ read (BasicSR's folder names and crop layout)
  lightsr prepare my_photos_HR -o data --scales 4 --workers 2
  lightsr prepare big_HR --crop 240 --step 120 --no-lr
        HR sub-images only (train with type: HRImageDataset; LR made and cached on the fly)

LR sub-images are cut from the MATLAB-bicubic downscale of the whole image (bit-exact with the
official DIV2K bicubic LR), HR first cropped to a multiple of every scale. Existing outputs are
kept: re-run the same command to finish an interrupted run. Inputs are never modified.
"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "prepare",
        help="cut large HR images into training sub-images (+ aligned bicubic LR)",
        description="Cut large HR images into overlapping sub-images (BasicSR extract_subimages: "
        "480-px crops every 240 px, plus a crop flush with the border when more than --thresh-size "
        "pixels remain), with aligned MATLAB-bicubic LR counterparts per scale.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("hr_dir", help="folder of HR images (e.g. DIV2K_train_HR)")
    p.add_argument("-o", "--output", metavar="DIR", help="where the output folders go (default: beside hr_dir)")
    p.add_argument("--scales", type=int, nargs="+", default=[2, 3, 4], help="LR scales to write (default: 2 3 4)")
    p.add_argument("--no-lr", action="store_true", help="write HR sub-images only")
    p.add_argument("--crop", type=int, default=480, help="HR sub-image size (default 480)")
    p.add_argument("--step", type=int, default=240, help="HR stride between sub-images (default 240)")
    p.add_argument("--thresh-size", type=int, default=0,
                   help="add a last crop flush with the border when more than this many pixels remain (default 0)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    p.add_argument("--overwrite", action="store_true", help="rewrite existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lightsr.data.prepare import default_output_dirs, extract_subimages
    from lightsr.data.train_dataset import DataError

    scales = [] if args.no_lr else sorted(set(args.scales))
    out_hr, out_lr = default_output_dirs(Path(args.hr_dir), Path(args.output) if args.output else None, scales)
    try:
        report = extract_subimages(args.hr_dir, out_hr, out_lr, crop=args.crop, step=args.step,
                                   thresh_size=args.thresh_size, workers=max(1, args.workers),
                                   overwrite=args.overwrite, progress=not args.quiet)
    except DataError as exc:
        print(f"lightsr prepare: error: {exc}", file=sys.stderr)
        return 2
    print(f"{report.images} images -> {report.written} sub-images written, {report.skipped} already there, "
          f"{len(report.failed)} images failed")
    print(f"HR: {out_hr}")
    for s, d in out_lr.items():
        print(f"LR x{s}: {d}")
    return 1 if report.failed else 0
