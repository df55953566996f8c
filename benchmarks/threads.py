"""Intra-op thread count against machine load: the measurement behind lightsr's thread default.

For each load condition - nothing else running, and ``--busy N`` other processes each spinning on
one core (as a training job or another upscale would) - the default model upscales one image
through ``Upscaler`` with 1, 2, ... threads, interleaved, ``--repeats`` times; the table gives the
median time per thread count and load, and the ratio to 1 thread. The policy
(``lightsr.inference.policy.default_threads``: the usable cores minus the 1-minute load average)
is printed with what it would pick.

    python benchmarks/threads.py                      # 320x180 -> x4, 1 and 2 threads, idle and 1 busy core
    python benchmarks/threads.py --size 90 160 --busy 0 1 2
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from lightsr.bench import environment, format_environment
from lightsr.inference import Upscaler
from lightsr.inference.policy import default_threads, usable_cores

SPIN = "import time\nwhile True:\n    pass\n"


def _spinners(n: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(n)]
    time.sleep(0.5)  # let them take their cores
    return procs


def _stop(procs) -> None:
    for p in procs:
        p.kill()
        p.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model (default: the default model, shipped weights)")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--size", nargs=2, type=int, default=(180, 320), metavar=("H", "W"))
    ap.add_argument("--threads", nargs="+", type=int, default=None, help="thread counts (default 1..cores)")
    ap.add_argument("--busy", nargs="+", type=int, default=[0, 1], help="other spinning processes per condition")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    counts = args.threads or list(range(1, usable_cores() + 1))
    print("command: python benchmarks/threads.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print(format_environment(environment()))
    up = Upscaler(args.model, args.scale, tile=0, precision="fp32", device="cpu")
    img = np.random.default_rng(0).integers(0, 256, (*args.size, 3), dtype=np.uint8)
    up.upscale_pixels(img)  # warm-up (native kernels built, caches)
    times = {(b, n): [] for b in args.busy for n in counts}
    for r in range(args.repeats):
        for b in (args.busy if r % 2 == 0 else args.busy[::-1]):
            procs = _spinners(b)
            try:
                for n in (counts if r % 2 == 0 else counts[::-1]):
                    torch.set_num_threads(n)
                    t0 = time.perf_counter()
                    up.upscale_pixels(img)
                    times[(b, n)].append(time.perf_counter() - t0)
            finally:
                _stop(procs)
    print(f"\n{args.size[1]}x{args.size[0]} -> x{up.scale}, {type(up.model).__name__}, fp32, "
          f"{args.repeats} interleaved runs; {usable_cores()} usable cores\n")
    print("| other busy processes | threads | median s | vs 1 thread | policy would pick |")
    print("|---|---|---|---|---|")
    for b in args.busy:
        base = statistics.median(times[(b, counts[0])])
        for n in counts:
            med = statistics.median(times[(b, n)])
            print(f"| {b} | {n} | {med:.2f} | {base / med:.2f}x | {default_threads(load=float(b))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
