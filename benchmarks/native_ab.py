"""The native kernels of two source trees in one process, interleaved: each case runs with this
tree's library and with the other tree's (``--before TREE``), call by call in turn, on the same
tensors, so machine load and cache state hit both alike.

Only the C library is swapped; the Python around it is this tree's, so the two libraries need the
same entry points (a tree from before a kernel was added cannot run that kernel's cases). Cases are
LAMNet's step shapes (batch 8, 48 x 48 LR patches): its focal attention forward and backward
through autograd, horizontal and vertical, and the bfloat16 forward of inference; DLGSANet-tiny's
fused dynamic convolution, forward and backward; the 3x3 depth-wise convolution of the gated FFNs and
its kernel gradient.

    git worktree add /tmp/old <commit>
    python benchmarks/native_ab.py --before /tmp/old --repeats 20
    python benchmarks/native_ab.py --before /tmp/old --only depth-wise --batch 1 --size 180
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from lightsr.bench import environment, format_environment
from lightsr.ops import _depthwise_native, _native
from lightsr.ops.dynamic_dwconv import dynamic_dwconv_fused
from lightsr.ops.focal_attention import build_kernel_map, focal_attention

PATH_OF_TREE = "import lightsr.ops._native as n; assert n.available(), n.build_error(); print(n.library_path())"


def _library_of(tree: Path) -> Path:
    """Builds (or finds in the cache) the other tree's library, in a process that imports that tree."""
    out = subprocess.run([sys.executable, "-c", PATH_OF_TREE], env={**os.environ, "PYTHONPATH": str(tree / "src")},
                         capture_output=True, text=True, cwd=str(tree))
    if out.returncode:
        raise SystemExit(f"no native library for {tree}: {out.stderr.strip()[-300:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def _fsa_cases(g, batch: int, size: int) -> dict:
    """LAMNet's focal attention: float32 forward and backward, bfloat16 forward, both directions."""
    taps = build_kernel_map()
    cl = torch.channels_last
    # as in LAMNet: x the second half of proj_in's channels-last output, 52 kernel logits per pixel
    x = torch.randn(batch, 64, size, size, generator=g).contiguous(memory_format=cl)[:, 32:].detach()
    k = torch.randn(batch, 52, size, size, generator=g).contiguous(memory_format=cl)
    gout = torch.randn(batch, 32, size, size, generator=g).contiguous(memory_format=cl)
    xh, kh = x.bfloat16(), k.bfloat16()
    cases = {}
    for dim, name in ((-1, "horizontal"), (-2, "vertical")):
        xg, kg = x.clone().requires_grad_(), k.clone().requires_grad_()
        saved = {}

        def prepare(dim=dim, xg=xg, kg=kg, saved=saved):
            saved["y"] = focal_attention(xg, kg, taps, dim, activation="tanh")

        cases[f"FSA {name} forward (32 ch, 13 taps, tanh)"] = (
            None, lambda dim=dim: focal_attention(x, k, taps, dim, activation="tanh"))
        cases[f"FSA {name} backward"] = (
            prepare, lambda xg=xg, kg=kg, saved=saved: torch.autograd.grad(saved["y"], (xg, kg), gout))
        cases[f"FSA {name} forward, bfloat16 (inference)"] = (
            None, lambda dim=dim: focal_attention(xh, kh, taps, dim, activation="tanh"))
    return cases


def _dynamic_cases(g, batch: int, size: int) -> dict:
    """DLGSANet-tiny's MHDLSA: 48 channels in 8 groups, 7x7 kernels from 12 hidden channels (fused)."""
    cl = torch.channels_last
    x = torch.randn(batch, 48, size, size, generator=g).contiguous(memory_format=cl).requires_grad_()
    h = torch.randn(batch, 12, size, size, generator=g).contiguous(memory_format=cl).requires_grad_()
    cw = (torch.randn(392, 12, 1, 1, generator=g) * 0.3).requires_grad_()
    cb = (torch.randn(392, generator=g) * 0.1).requires_grad_()
    gout = torch.randn(batch, 48, size, size, generator=g).contiguous(memory_format=cl)
    saved = {}

    def prepare():
        saved["y"] = dynamic_dwconv_fused(x, h, cw, cb, 7)

    return {
        "dynamic conv fused forward (DLGSANet-tiny: 48 ch, 7x7 from 12 hidden)": (
            None, lambda: dynamic_dwconv_fused(x.detach(), h.detach(), cw.detach(), cb.detach(), 7)),
        "dynamic conv fused backward": (prepare, lambda: torch.autograd.grad(saved["y"], (x, h, cw, cb), gout)),
    }


def _depthwise_cases(g, batch: int, size: int) -> dict:
    """The gated FFNs' 3x3 depth-wise convolution and its kernel and bias gradient (DLGSANet-tiny 192, LAMNet 128
    channels)."""
    cases = {}
    for c in (192, 128):
        x = torch.randn(batch, c, size, size, generator=g).contiguous(memory_format=torch.channels_last)
        gout = torch.randn(batch, c, size, size, generator=g).contiguous(memory_format=torch.channels_last)
        w = torch.randn(c, 1, 3, 3, generator=g)
        cases[f"depth-wise 3x3 forward ({c} ch)"] = (
            None, lambda x=x, w=w: _depthwise_native.forward(x, w, None, (1, 1), (1, 1), 0, False))
        cases[f"depth-wise 3x3 kernel + bias gradient ({c} ch)"] = (
            None, lambda x=x, gout=gout: _depthwise_native.weight_grad(gout, x, (3, 3), (1, 1), (1, 1), True))
    return cases


def _cases(batch: int, size: int) -> dict:
    g = torch.Generator().manual_seed(0)
    return {**_fsa_cases(g, batch, size), **_dynamic_cases(g, batch, size), **_depthwise_cases(g, batch, size)}


def _time(prepare, fn) -> float:
    if prepare is not None:
        prepare()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, type=Path, help="the other source tree (a git worktree)")
    ap.add_argument("--repeats", type=int, default=20, help="rounds; each runs every case 5 times per library")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="", metavar="TEXT", help="only the cases whose name contains TEXT")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"command: python benchmarks/native_ab.py {shlex.join(argv if argv is not None else sys.argv[1:])}")
    print(format_environment(environment()))
    if not _native.available():
        raise SystemExit(f"no native library here: {_native.build_error()}")
    before = _library_of(args.before.resolve())
    libs = {"now": _native._library(), "before": _native.load(before, partial=True)}
    print(f"library now: {_native.library_path()}\nlibrary before: {before} ({args.before})\n")
    cases = {name: case for name, case in _cases(args.batch, args.size).items() if args.only in name}
    times = {(lib, case): [] for lib in libs for case in cases}
    try:
        for r in range(args.repeats):
            for lib in (("now", "before") if r % 2 else ("before", "now")):
                _native._state["lib"] = libs[lib]
                for case, (prepare, fn) in cases.items():
                    times[(lib, case)] += [_time(prepare, fn) for _ in range(5)]
    finally:
        _native._state["lib"] = libs["now"]
    print(f"batch {args.batch}, {args.size}x{args.size}, {args.repeats} rounds x 5 calls per library, medians\n")
    print("| case | before ms | now ms | speed-up |\n|---|---|---|---|")
    for case in cases:
        before, now = statistics.median(times[("before", case)]), statistics.median(times[("now", case)])
        print(f"| {case} | {before * 1e3:.2f} | {now * 1e3:.2f} | {before / now:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
