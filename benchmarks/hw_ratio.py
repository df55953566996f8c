"""How much of the hardware each model uses: MAC throughput relative to a plain conv net (IMDN).

Every model and IMDN (``lightsr.create_model("imdn")``, a plain-convolution peer of about the same
MACs) are timed in **one process, interleaved** (one repetition of each in turn, alternating the
order), so that a change of machine load hits all of them alike. For each path the table gives
GMACs (``lightsr.complexity``), the median time, GMAC/s = GMACs / median, and the ratio of that
throughput to IMDN's in the same loop:

* **inference** through the user path: ``Upscaler(model, tile=0, precision=...)`` on a whole
  uint8 image (what ``lightsr upscale`` runs per image, without file I/O), at 320x180 -> x4 (the
  papers' 1280x720 output) and 640x360 -> x2 (a photo);
* **training step**: batch 8, LR patch 48, x4, L1 loss + backward + Adam step, ``model.train()``;
* in **fp32**, and in **bf16** (``precision="bf16"``; the training step under CPU bf16 autocast)
  where the CPU has native bf16 (AVX512-BF16 or AMX: the flags are printed). ``--force-bf16``
  runs bf16 on other CPUs too (correctness of the path, not a meaningful speed).

The full DLGSANet (282 GMACs at x4) is measured at a quarter of the pixels (``--full-scale-down``)
and at batch 2 in training, against IMDN timed at the same size in the same loop; its rows say so.
Weights are random (speed does not depend on them). glibc malloc is tuned as ``lightsr upscale``,
``eval``, ``bench`` and ``train`` tune it (``lightsr.allocator.tune_malloc``: freed memory kept for
reuse), for every model and IMDN alike; ``--no-malloc-tuning`` measures glibc's defaults.

    python benchmarks/hw_ratio.py --threads 1                       # the whole table (about 30-60 min)
    python benchmarks/hw_ratio.py --threads 1 --models dlgsanet_tiny lamnet --sizes x4 --no-train
    python benchmarks/hw_ratio.py --quick                           # toy sizes: checks that it runs
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lightsr.bench import environment, format_environment, interleaved_timings, load_average
from lightsr.complexity import count_model_macs
from lightsr.inference import Upscaler
from lightsr.inference.policy import cpu_flags, native_bf16
from lightsr.models import create_model

MODELS = ["dlgsanet_tiny", "dlgsanet_light", "lgun", "lamnet", "lamnet_large", "dlgsanet"]
PEER = "imdn"
SIZES = {"x4": (4, (180, 320)), "x2": (2, (360, 640))}
TARGETS = {"fp32": 0.5, "bf16": 0.4}  # inference
TRAIN_TARGETS = {"fp32": 0.5}  # issue 21 sets no bar for the bf16 training step
TRAIN = {"batch": 8, "patch": 48, "scale": 4}


@dataclass
class Case:
    """One timed configuration: a model at an input size (batch, h, w)."""

    model: str
    scale: int
    batch: int
    size: tuple[int, int]
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.model}@{self.batch}x{self.size[0]}x{self.size[1]}"




def _cases(models: list[str], scale: int, size: tuple[int, int], batch: int, full_down: int) -> list[Case]:
    """The models' cases plus the IMDN case(s) they are compared with (a smaller one for full DLGSANet)."""
    cases, small = [Case(PEER, scale, batch, size)], None
    for m in models:
        if m == "dlgsanet" and full_down > 1:
            small = (max(8, size[0] // full_down), max(8, size[1] // full_down))
            b = max(1, batch // 4)
            note = f"measured at {small[1]}x{small[0]}{f', batch {b}' if b != batch else ''} (vs IMDN at that size)"
            cases.append(Case(m, scale, b, small, note))
            cases.append(Case(PEER, scale, b, small))
        else:
            cases.append(Case(m, scale, batch, size))
    return cases


def _macs(case: Case, backward: bool) -> int:
    return count_model_macs(case.model, case.scale, case.size, backward=backward, batch=case.batch).macs


def _inference_fn(case: Case, precision: str):
    model = create_model(case.model, case.scale)
    up = Upscaler(model, tile=0, precision=precision, device="cpu", warn=lambda msg: None)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (case.size[0], case.size[1], 3), dtype=np.uint8)
    return lambda: up.upscale_pixels(img)


def _train_fn(case: Case, precision: str):
    torch.manual_seed(0)
    model = create_model(case.model, case.scale).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    h, w = case.size
    x = torch.rand(case.batch, 3, h, w)
    y = torch.rand(case.batch, 3, h * case.scale, w * case.scale)
    bf16 = precision == "bf16"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.l1_loss(model(x).float(), y)
        loss.backward()
        opt.step()
    return step


def _table(title: str, cases: list[Case], fns: dict, macs: dict, args, target: float | None) -> list[dict]:
    print(f"\n## {title}\n", flush=True)
    t = interleaved_timings(fns, warmup=args.warmup, repeats=args.repeats)
    rows, peer_rate = [], {}
    for c in cases:
        rate = macs[c.key] / t[c.key].median
        if c.model == PEER:
            peer_rate[(c.batch, c.size)] = rate
        rows.append({"case": c, "median": t[c.key].median, "p90": t[c.key].p90, "rate": rate})
    print("| model | input | GMACs | median ms | p90 ms | GMAC/s | ratio to IMDN | target |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        c = r["case"]
        r["ratio"] = r["rate"] / peer_rate[(c.batch, c.size)]
        met = "" if c.model == PEER else "no bar" if target is None else (
            f">= {target}: " + ("met" if r["ratio"] >= target else "NOT met"))
        label = c.model + (f" ({c.note})" if c.note else "")
        print(f"| {label} | {c.batch}x{c.size[1]}x{c.size[0]} | {macs[c.key] / 1e9:.2f} | {r['median'] * 1e3:.0f} | "
              f"{r['p90'] * 1e3:.0f} | {r['rate'] / 1e9:.1f} | {r['ratio']:.2f} | {met} |", flush=True)
    return rows


def _run_inference(args, precision: str) -> None:
    for size_name in args.sizes:
        scale, size = SIZES[size_name]
        if args.quick:
            size = (12, 20)
        cases = _cases(args.models, scale, size, 1, args.full_scale_down)
        fns = {c.key: _inference_fn(c, precision) for c in cases}
        macs = {c.key: _macs(c, backward=False) for c in cases}
        title = (f"Inference, {precision}, {size[1]}x{size[0]} -> x{scale}, via Upscaler(tile=0), "
                 f"{args.threads} thread(s)")
        _table(title, cases, fns, macs, args, TARGETS[precision])


def _run_train(args, precision: str) -> None:
    b, p, s = TRAIN["batch"], TRAIN["patch"], TRAIN["scale"]
    if args.quick:
        b, p = 2, 12
    cases = _cases(args.models, s, (p, p), b, args.full_scale_down)
    fns = {c.key: _train_fn(c, precision) for c in cases}
    macs = {c.key: _macs(c, backward=True) for c in cases}
    autocast = " under CPU bf16 autocast" if precision == "bf16" else ""
    title = f"Training step{autocast}, batch {b}, LR {p}x{p}, x{s}, L1 + Adam, {args.threads} thread(s)"
    _table(title, cases, fns, macs, args, TRAIN_TARGETS.get(precision))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["x4", "x2"])
    ap.add_argument("--precisions", nargs="+", choices=sorted(TARGETS), default=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--no-inference", action="store_true")
    ap.add_argument("--force-bf16", action="store_true", help="run bf16 also without native bf16 in the CPU")
    ap.add_argument("--full-scale-down", type=int, default=2,
                    help="full DLGSANet at 1/N of each side (and batch / 4 in training); 1 = the same size")
    ap.add_argument("--quick", action="store_true", help="toy sizes, one repetition (a smoke test)")
    ap.add_argument("--no-malloc-tuning", action="store_true",
                    help="keep glibc's malloc defaults (the CLI commands tune it; see lightsr.allocator)")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = 1, 0
    torch.set_num_threads(args.threads)
    tuned = False
    if not args.no_malloc_tuning:
        from lightsr.allocator import tune_malloc

        tuned = tune_malloc()
    print("command: python benchmarks/hw_ratio.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print(format_environment(environment()))
    bf16_native = native_bf16()
    shown = sorted(cpu_flags() & {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"})
    print(f"CPU flags: {' '.join(shown) or 'none of avx2/avx512/amx'}; native bf16 (avx512_bf16 / amx_bf16): "
          f"{'yes' if bf16_native else 'no'}")
    print(f"malloc tuned as in the CLI: {'yes' if tuned else 'no'}")
    for precision in args.precisions:
        if precision == "bf16" and not (bf16_native or args.force_bf16):
            print("\nbf16 skipped: this CPU has no native bf16 (AVX512-BF16 or AMX); --force-bf16 runs it anyway")
            continue
        if not args.no_inference:
            _run_inference(args, precision)
        if not args.no_train:
            _run_train(args, precision)
    print(f"\nload average at the end (1/5/15 min): {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
