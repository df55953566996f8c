"""Speed of lightsr's MATLAB-compatible imresize on a DIV2K-sized image (2040x1356 RGB, /4).

Times, side by side in one run: our numpy tap-gather path (uint8, per-pass rounding = what LR
generation uses), the same on float64, the torch path (imresize_tensor, float32 / float64), a dense
matrix-product variant of the same resampling (the obvious alternative), and Pillow's BICUBIC
(not MATLAB-equivalent; a yardstick only). Prints median seconds and ratios to our uint8 path.

    python benchmarks/imresize_speed.py [--repeats 7] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image

from lightsr.data.imresize import _weight_matrix_cached, imresize, imresize_tensor, output_size


def dense_numpy(img: np.ndarray, scale: float) -> np.ndarray:
    """Same resampling as two dense matrix products (float64, per-pass rounding)."""
    h, w = img.shape[:2]
    oh, ow = output_size(h, scale), output_size(w, scale)
    mh = _weight_matrix_cached(h, oh, scale, True)
    mw = _weight_matrix_cached(w, ow, scale, True)
    x = np.tensordot(mh, img.astype(np.float64), axes=(1, 0))
    x = np.clip(np.floor(x + 0.5), 0, 255)
    x = np.tensordot(mw, x, axes=(1, 1)).transpose(1, 0, 2)
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up (weight tables are cached after the first call)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (1356, 2040, 3), dtype=np.uint8)
    f64 = img.astype(np.float64) / 255
    t32 = torch.from_numpy(img.transpose(2, 0, 1)[None].astype(np.float32) / 255)
    t64 = t32.double()
    pil = Image.fromarray(img)
    ref = imresize(img, 0.25)
    assert np.array_equal(dense_numpy(img, 0.25), ref)
    cases = {
        "imresize uint8 (numpy taps, per-pass rounding)": lambda: imresize(img, 0.25),
        "imresize float64 (numpy taps)": lambda: imresize(f64, 0.25),
        "imresize_tensor float32 (torch matmul)": lambda: imresize_tensor(t32, 0.25),
        "imresize_tensor float64 (torch matmul)": lambda: imresize_tensor(t64, 0.25),
        "dense numpy matmul uint8 (alternative)": lambda: dense_numpy(img, 0.25),
        "Pillow BICUBIC reduce (not MATLAB)": lambda: pil.resize((510, 339), Image.BICUBIC),
    }
    print(f"2040x1356 RGB -> 510x339 (x1/4), median of {args.repeats} runs, torch threads {torch.get_num_threads()}")
    base = None
    for name, fn in cases.items():
        t = timeit(fn, args.repeats)
        base = base or t
        print(f"  {name:<50} {t * 1000:8.1f} ms   {t / base:5.2f}x")


if __name__ == "__main__":
    main()
