"""Wall time of the ``lightsr upscale`` command, whole process, for several source trees / options.

Each variant runs ``python -m lightsr upscale IMAGE -o <temp dir> [options] ARGS`` in a fresh
process with ``PYTHONPATH=<tree>/src`` (import, weights, compilation and tiling included: what a
user waits for), interleaved with the other variants, ``--repeats`` times. The table gives the
median and p90 wall time and each variant's speed-up over the first one.

A variant is ``NAME=TREE`` or ``NAME=TREE:EXTRA ARGS``, where TREE is a checkout of lightsr (an
old commit as a git worktree: ``git worktree add /tmp/old <commit>``):

    python benchmarks/upscale_ab.py --make-photo 320x180 /tmp/photo_320.png
    python benchmarks/upscale_ab.py /tmp/photo_320.png --scale 4 --threads 2 \\
        --variant old=/tmp/old --variant new=.
    python benchmarks/upscale_ab.py /tmp/photo_1280.png --scale 2 --threads 2 \\
        --variant old=/tmp/old --variant new=. --variant "new, untiled=.:--tile 0"

``--make-photo WxH PATH`` writes a test photo of that size: an Urban100 image of ../shared (or the
bundled sample when ../shared is absent) resized with Pillow's bicubic filter (the content does not
change the timing; the size does).
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PHOTO_SOURCES = [ROOT.parent / "shared/datasets/benchmark/Urban100/HR/img005.png",
                 ROOT / "src/lightsr/assets/chelsea.png"]


def make_photo(size: str, path: str) -> None:
    w, h = (int(v) for v in size.lower().split("x"))
    src = next(p for p in PHOTO_SOURCES if p.exists())
    Image.open(src).convert("RGB").resize((w, h), Image.BICUBIC).save(path)
    print(f"wrote {path} ({w}x{h}, from {src.name})")


def _variant(spec: str) -> tuple[str, Path, list[str]]:
    name, _, rest = spec.partition("=")
    tree, _, extra = rest.partition(":")
    return name, Path(tree).resolve(), shlex.split(extra)


def _run(tree: Path, image: str, args, extra: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "lightsr", "upscale", image, "-o", out, "--scale", str(args.scale),
               "--threads", str(args.threads), *args.common, *extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0 or not any(Path(out).iterdir()):
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return elapsed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", nargs="?")
    ap.add_argument("--make-photo", nargs=2, metavar=("WxH", "PATH"), help="write a test photo and exit")
    ap.add_argument("--variant", action="append", default=[], help="NAME=TREE[:EXTRA ARGS] (repeatable)")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--common", default="", help="arguments given to every variant")
    args = ap.parse_args(argv)
    if args.make_photo:
        make_photo(*args.make_photo)
        return 0
    if not args.image or not args.variant:
        ap.error("an image and at least one --variant are needed")
    args.common = shlex.split(args.common)
    variants = [_variant(v) for v in args.variant]
    print("command: python benchmarks/upscale_ab.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)))
    from lightsr.bench import environment, format_environment

    print(format_environment(environment()))
    im = Image.open(args.image)
    print(f"image: {args.image} ({im.size[0]}x{im.size[1]}), x{args.scale}, {args.threads} thread(s), "
          f"{args.repeats} interleaved runs per variant\n")
    times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for r in range(args.repeats):
        for name, tree, extra in (variants if r % 2 == 0 else variants[::-1]):
            times[name].append(_run(tree, args.image, args, extra))
    base = statistics.median(times[variants[0][0]])
    print("| variant | tree | extra arguments | median s | slowest s | speed-up over the first |")
    print("|---|---|---|---|---|---|")
    for name, tree, extra in variants:
        t = sorted(times[name])
        med = statistics.median(t)
        print(f"| {name} | {tree} | {' '.join(extra) or '-'} | {med:.2f} | {t[-1]:.2f} | {base / med:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
