"""IMDN and PAN, loaded from their released checkpoints, evaluated with lightsr next to the numbers their
papers publish (default `basicsr` convention: Y unrounded, border = scale, uint8 output).

    python benchmarks/eval_peers.py --shared ../shared [--models imdn pan] [--scales 2 3 4]
                                    [--sets Set5 Set14 B100] [--threads 2]

Prints one Markdown table per model (ours / published / difference) and exits 1 if any of our
numbers misses the published one by more than --tol dB (default 0.02). Urban100 and Manga109 in
../shared are subsets (25 and 10 images), so they are not compared with the full-set numbers.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import lightsr
from lightsr.data.benchmark import find_benchmark

WEIGHTS = {"imdn": "weights/IMDN/IMDN_x{s}.pth", "pan": "weights/PAN/PANx{s}_DF2K.pth"}
LABEL = {"imdn": "IMDN", "pan": "PAN"}
# IMDN: its paper (Hui et al. 2019), as repeated in the LAMNet and DLGSANet tables (../shared/papers).
# PAN: its paper (Zhao et al. 2020, Table 3, models trained on DF2K).
PUBLISHED = {
    ("imdn", 2): {"Set5": (38.00, 0.9605), "Set14": (33.63, 0.9177), "B100": (32.19, 0.8996)},
    ("imdn", 3): {"Set5": (34.36, 0.9270), "Set14": (30.32, 0.8417), "B100": (29.09, 0.8046)},
    ("imdn", 4): {"Set5": (32.21, 0.8948), "Set14": (28.58, 0.7811), "B100": (27.56, 0.7353)},
    ("pan", 2): {"Set5": (38.00, 0.9605), "Set14": (33.59, 0.9181), "B100": (32.18, 0.8997)},
    ("pan", 3): {"Set5": (34.40, 0.9271), "Set14": (30.36, 0.8423), "B100": (29.11, 0.8050)},
    ("pan", 4): {"Set5": (32.13, 0.8948), "Set14": (28.61, 0.7822), "B100": (27.59, 0.7363)},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default="../shared", help="the shared folder (datasets/benchmark, weights/)")
    ap.add_argument("--models", nargs="+", default=["imdn", "pan"], choices=sorted(WEIGHTS))
    ap.add_argument("--scales", nargs="+", type=int, default=[2, 3, 4])
    ap.add_argument("--sets", nargs="+", default=["Set5", "Set14", "B100"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tol", type=float, default=0.02, help="PSNR tolerance in dB")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shared = Path(args.shared)
    data = shared / "datasets" / "benchmark"
    status = 0
    t_all = time.time()
    for name in args.models:
        print(f"\n### {LABEL[name]}\n")
        print("| scale | " + " | ".join(args.sets) + " |")
        print("|---|" + "---|" * len(args.sets))
        for s in args.scales:
            model = lightsr.load_model(shared / WEIGHTS[name].format(s=s), name=name, scale=s)
            sets = [find_benchmark(data, n, s) for n in args.sets]
            t0 = time.time()
            r = lightsr.evaluate(model, sets, progress=False)
            pub = PUBLISHED.get((name, s), {})
            ours, theirs, diff = [], [], []
            for st in r.sets:
                ours.append(f"{st.psnr:.2f}/{st.ssim:.4f}")
                if st.name in pub:
                    pp, ps = pub[st.name]
                    theirs.append(f"{pp:.2f}/{ps:.4f}")
                    diff.append(f"{st.psnr - pp:+.3f}/{st.ssim - ps:+.4f}")
                    if abs(st.psnr - pp) > args.tol:
                        status = 1
                else:
                    theirs.append("-")
                    diff.append("-")
            print(f"| x{s} lightsr | " + " | ".join(ours) + " |")
            print(f"| x{s} published | " + " | ".join(theirs) + " |")
            print(f"| x{s} difference | " + " | ".join(diff) + f" |  <!-- {time.time() - t0:.0f} s -->")
            sys.stdout.flush()
            if r.failures:
                status = 1
                for f in r.failures:
                    print(f"failed: {f}", file=sys.stderr)
    print(f"\n(basicsr convention: Y unrounded, border = scale, uint8 output; {time.time() - t_all:.0f} s on "
          f"{torch.get_num_threads()} CPU threads)")
    return status


if __name__ == "__main__":
    sys.exit(main())
