"""One training step (forward + L1 loss + backward + Adam) of a model in several source trees,
interleaved: before / after a change, as the hardware-ratio table's training row runs it.

Each variant is a worker process with ``PYTHONPATH=<tree>/src`` that builds the model once (same
seed, batch 8 of random LR patches, x4) and runs one step per request; the workers take turns
(one step of each in turn, alternating the order), so a change of machine load hits all of them
alike, and only one runs at a time. The table gives each variant's median and p90 step time and
its speed-up over the first variant.

A variant is ``NAME=TREE`` (an old commit as a git worktree: ``git worktree add /tmp/old <commit>``):

    python benchmarks/train_step_ab.py --models dlgsanet_tiny lamnet --variant old=/tmp/old --variant new=.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import sys, time, torch
from lightsr import create_model
from lightsr.allocator import tune_malloc
name, batch, patch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
tune_malloc()
torch.set_num_threads(threads)
torch.manual_seed(0)
model = create_model(name, 4).train()
opt = torch.optim.Adam(model.parameters(), 1e-4)
x, y = torch.rand(batch, 3, patch, patch), torch.rand(batch, 3, 4 * patch, 4 * patch)
def step():
    opt.zero_grad(set_to_none=True)
    (model(x) - y).abs().mean().backward()
    opt.step()
print("ready", flush=True)
for line in sys.stdin:
    t0 = time.perf_counter()
    step()
    print(f"{(time.perf_counter() - t0) * 1e3:.3f}", flush=True)
"""


def _variant(spec: str) -> tuple[str, Path]:
    name, _, tree = spec.partition("=")
    if not tree:
        raise SystemExit(f"--variant {spec!r}: expected NAME=TREE")
    return name, Path(tree).resolve()


def _start(tree: Path, model: str, args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    proc = subprocess.Popen([sys.executable, "-c", WORKER, model, str(args.batch), str(args.patch), str(args.threads)],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(tree))
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit(f"the worker for {model} in {tree} did not start")
    return proc


def _step(proc: subprocess.Popen) -> float:
    proc.stdin.write("step\n")
    proc.stdin.flush()
    return float(proc.stdout.readline())


def _p90(v: list[float]) -> float:
    return sorted(v)[min(len(v) - 1, int(0.9 * len(v)))]


def run_model(model: str, variants, args) -> None:
    procs = {name: _start(tree, model, args) for name, tree in variants}
    try:
        for proc in procs.values():  # warm-up (first-use compilation, allocator)
            for _ in range(args.warmup):
                _step(proc)
        times = {name: [] for name in procs}
        order = list(procs)
        for i in range(args.repeats):
            for name in (order if i % 2 == 0 else order[::-1]):
                times[name].append(_step(procs[name]))
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait()
    first = statistics.median(times[order[0]])
    print(f"\n## {model}: training step, batch {args.batch}, LR {args.patch}x{args.patch}, x4, "
          f"{args.threads} thread(s), {args.repeats} interleaved repeats\n")
    print("| variant | tree | median ms | p90 ms | speed-up |\n|---|---|---|---|---|")
    for name, tree in variants:
        med = statistics.median(times[name])
        print(f"| {name} | {tree} | {med:.0f} | {_p90(times[name]):.0f} | {first / med:.2f}x |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["dlgsanet_tiny"])
    ap.add_argument("--variant", action="append", required=True, metavar="NAME=TREE")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args(argv)
    variants = [_variant(v) for v in args.variant]
    print(f"command: python benchmarks/train_step_ab.py {shlex.join(argv if argv is not None else sys.argv[1:])}")
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[-1].split("\n", 1)[0].split() \
        if Path("/proc/cpuinfo").exists() else []
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    load = tuple(round(v, 2) for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"CPU: {platform.processor() or platform.machine()} [{', '.join(wanted)}], load average {load}")
    for model in args.models:
        run_model(model, variants, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
