"""Training throughput on this machine: iterations/s at each paper recipe's batch and LR patch (x2).

Batch and patch come from ``configs/<model>_x2.yaml`` (DLGSANet: 16 x 48, LAMNet: 64 x 64, LGUN:
16 x 64). One iteration is exactly what ``lightsr train`` does per step (forward, L1, backward, Adam
step, EMA update when the recipe has one). A paper batch rarely fits in a CPU's memory at once, so
it is processed in chunks of ``--chunk`` samples with gradient accumulation: the same arithmetic as
one batch (the result is the time of one paper-batch iteration), bounded memory. Each model runs in
its own process (peak memory per model), with one warm-up chunk, then ``--iters`` timed iterations;
the table prints the median. ``--compare-ops`` times the reference implementations of the custom
operators (``lightsr.ops.use_reference_ops``), each in its own process too, side by side.
``--malloc`` picks glibc's malloc defaults, the tuning ``lightsr train`` applies on CPU
(``lightsr.allocator.tune_malloc``: freed memory is reused, not page-faulted in again every step)
or both; the minor page faults per iteration are printed.

    python benchmarks/train_throughput.py                          # all models, ~1 h on 2 busy cores
    python benchmarks/train_throughput.py --models dlgsanet_tiny --threads 1 2 --compare-ops
    python benchmarks/train_throughput.py --models lamnet --scale 4 --batch 16 --patch 48 --chunk 16 \
        --threads 1 --iters 3 --compare-ops --malloc both      # the issue-5 training step, each in its own process
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ["dlgsanet_tiny", "dlgsanet_light", "dlgsanet", "lgun", "lamnet", "lamnet_large"]


def recipe(model: str, scale: int = 2):
    sys.path.insert(0, str(REPO / "src"))
    from lightsr.train.config import load_config

    cfg = load_config(REPO / "configs" / f"{model}_x{scale}.yaml")
    return cfg


def measure(model_name: str, iters: int, chunk: int, threads: int | None, reference: bool, malloc: str,
            scale: int = 2, batch: int | None = None, patch: int | None = None) -> dict:
    import torch

    from lightsr.allocator import tune_malloc

    tuned = malloc == "tuned" and tune_malloc()

    import lightsr
    from lightsr.ops import use_reference_ops
    from lightsr.train.ema import ModelEMA
    from lightsr.train.optim import build_optimizer

    if threads:
        torch.set_num_threads(threads)
    cfg = recipe(model_name, scale)
    batch, patch, scale = batch or cfg.train_set.batch_size, patch or cfg.lq_patch, cfg.scale
    torch.manual_seed(0)
    model = lightsr.create_model(model_name, scale).train()
    opt = build_optimizer(model.parameters(), cfg.train.optim_g)
    ema = ModelEMA(model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    chunk = min(chunk, batch)
    sizes = [chunk] * (batch // chunk) + ([batch % chunk] if batch % chunk else [])
    lq = torch.rand(batch, 3, patch, patch)
    gt = torch.rand(batch, 3, patch * scale, patch * scale)

    def step(n_chunks=None):
        opt.zero_grad(set_to_none=True)
        start = 0
        for size in sizes[:n_chunks]:
            x, y = lq[start:start + size], gt[start:start + size]
            loss = torch.nn.functional.l1_loss(model(x), y) * (size / batch)
            loss.backward()
            start += size
        if n_chunks is None:
            opt.step()
            if ema is not None:
                ema.update(model)

    with use_reference_ops(reference):
        step(n_chunks=1)  # warm-up: allocator, oneDNN primitives
        times = []
        faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(iters):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / iters
    med = statistics.median(times)
    return {"model": model_name, "reference_ops": reference, "batch": batch, "patch": patch, "chunk": chunk,
            "malloc": "tuned" if tuned else "default", "faults_per_it": faults,
            "params": lightsr.count_parameters(model), "s_per_it": med, "it_per_s": 1.0 / med,
            "img_per_s": batch / med, "times": times, "threads": torch.get_num_threads(),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def _describe(r: dict) -> str:
    """'1 threads reference ops, malloc tuned' for one measured variant."""
    return f"{r['threads']} threads{' reference ops' if r['reference_ops'] else ''}, malloc {r['malloc']}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--iters", type=int, default=2, help="timed iterations per model (default 2)")
    ap.add_argument("--chunk", type=int, default=4, help="samples per forward/backward chunk (default 4)")
    ap.add_argument("--threads", type=int, nargs="+", default=[None],
                    help="torch threads; several values are measured side by side (default: torch's default)")
    ap.add_argument("--compare-ops", action="store_true", help="also time the reference custom operators")
    ap.add_argument("--malloc", choices=["default", "tuned", "both"], default="tuned",
                    help="glibc malloc defaults, the tuning `lightsr train` applies (default), or both side by side")
    ap.add_argument("--scale", type=int, default=2, choices=[2, 3, 4], help="recipe configs/<model>_x<scale>.yaml")
    ap.add_argument("--batch", type=int, help="override the recipe's batch (e.g. 16, the issue-5 training step)")
    ap.add_argument("--patch", type=int, help="override the recipe's LR patch (e.g. 48)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.iters, args.chunk, args.threads[0], args.reference, args.malloc,
                                 args.scale, args.batch, args.patch)))
        return 0

    import torch

    threads_desc = ", ".join(str(t or torch.get_num_threads()) for t in args.threads)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {threads_desc}, chunk {args.chunk}, {args.iters} timed iterations "
          f"(median), x{args.scale}, Adam + EMA as the recipe")
    rows = []
    mallocs = ["default", "tuned"] if args.malloc == "both" else [args.malloc]
    variants = [(t, r, m) for m in mallocs for t in args.threads
                for r in ((False, True) if args.compare_ops else (False,))]
    for name in args.models:
        for threads, reference, malloc in variants:
            cmd = [sys.executable, __file__, "--one", name, "--iters", str(args.iters), "--chunk", str(args.chunk),
                   "--malloc", malloc, "--scale", str(args.scale)]
            cmd += ["--batch", str(args.batch)] if args.batch else []
            cmd += ["--patch", str(args.patch)] if args.patch else []
            if threads:
                cmd += ["--threads", str(threads)]
            if reference:
                cmd.append("--reference")
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                print(f"{name}{' (reference ops)' if reference else ''}: failed: {tail}", flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"  measured {name} {_describe(r)}: {r['s_per_it']:.1f} s/it "
                  f"({', '.join(f'{t:.1f}' for t in r['times'])})", flush=True)
    print()
    print("| model | params | batch x LR patch | threads | ops | malloc | s / iteration | iterations / s | images / s "
          "| minor page faults / iteration | peak RSS (GB) | 500k iterations |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        days = 500_000 * r["s_per_it"] / 86400
        print(f"| {r['model']} | {r['params']:,} | {r['batch']} x {r['patch']} | {r['threads']} | "
              f"{'reference' if r['reference_ops'] else 'fast'} | {r['malloc']} | {r['s_per_it']:.2f} | "
              f"{r['it_per_s']:.4f} | {r['img_per_s']:.2f} | {r['faults_per_it']:,.0f} | {r['peak_rss_gb']:.1f} | "
              f"{days:,.0f} days |")
    if len(variants) > 1:
        print()
        for name in args.models:
            ref = next((r for r in rows if r["model"] == name), None)
            for r in rows:
                if r["model"] == name and r is not ref and ref is not None:
                    print(f"{name}: {_describe(r)} / {_describe(ref)}: time ratio "
                          f"{r['s_per_it'] / ref['s_per_it']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
