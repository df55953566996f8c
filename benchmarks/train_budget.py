"""Train dlgsanet_tiny x2 on ../shared/datasets/train for a fixed wall-clock budget on this machine,
then print Set5 PSNR/SSIM (Y, crop 2) before training, after it (EMA and raw weights) and for bicubic.

The run goes through the real CLI (``python -m lightsr train``) and is stopped with SIGTERM when the
budget is spent: the trainer writes a checkpoint and exits, exactly as on a cluster time limit. The
data are T91 + BSD200 + the 100 DIV2K-valid crops as HR-only folders (LR by MATLAB-bicubic imresize,
cached on disk), validation on Set5 every ``--val-freq`` iterations (logged to val_log.csv).

    python benchmarks/train_budget.py --minutes 30               # ~30 min on 2 cores
    python benchmarks/train_budget.py --minutes 30 --resume      # continue an interrupted budget run
    lightsr plot-log experiments/train_budget -o docs/figures/train_budget_curve.png
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="training wall-clock budget (default 30)")
    ap.add_argument("--shared", default=str(REPO.parent / "shared"), help="the ../shared folder")
    ap.add_argument("--out", default="experiments/train_budget", help="run folder")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=24, help="LR patch size")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--val-freq", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="continue the run in --out (the budget counts anew)")
    args = ap.parse_args()

    shared = Path(args.shared)
    set5 = shared / "datasets" / "benchmark" / "Set5"
    train_dirs = [shared / "datasets" / "train" / d for d in ("T91", "BSD200", "DIV2K_valid_HR_crop256")]
    for p in [set5, *train_dirs]:
        if not p.is_dir():
            print(f"missing {p}: this benchmark needs ../shared (or --shared)", file=sys.stderr)
            return 2
    out = Path(args.out)
    cfg = {
        "name": out.name,
        "description": f"train_budget.py: dlgsanet_tiny x2, {args.minutes:g} min on this CPU",
        "scale": 2,
        "num_gpu": 0,
        "manual_seed": args.seed,
        "datasets": {
            "train": {"type": "HRImageDataset", "dataroot_gt": [str(p) for p in train_dirs], "lq_size": args.patch,
                      "batch_size": args.batch, "num_worker_per_gpu": args.workers, "use_hflip": True, "use_rot": True},
            "val": {"name": "Set5", "type": "PairedImageDataset", "dataroot_gt": str(set5 / "HR"),
                    "dataroot_lq": str(set5 / "LR_bicubic" / "X2"), "filename_tmpl": "{}x2"},
        },
        "network_g": {"type": "dlgsanet_tiny"},
        "path": {"experiments_root": str(out)},
        "train": {"total_iter": 1_000_000, "ema_decay": 0.999, "ema_warmup": True,
                  "optim_g": {"type": "Adam", "lr": args.lr, "betas": [0.9, 0.99]},
                  "scheduler": {"type": "ConstantLR"}, "num_threads": args.threads},
        "val": {"val_freq": args.val_freq},
        "logger": {"print_freq": 10, "save_checkpoint_freq": 200, "keep_checkpoints": 2, "progress_bar": False},
    }
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out.parent / f"{out.name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    import torch

    import lightsr
    from lightsr.data.imresize import imresize
    from lightsr.data.train_dataset import SRValDataset
    from lightsr.metrics import psnr, ssim
    from lightsr.train.validate import evaluate

    val = SRValDataset(set5 / "HR", set5 / "LR_bicubic" / "X2", scale=2, filename_tmpl="{}x2")
    fns = {"psnr": lambda a, b: psnr(a, b, crop_border=2), "ssim": lambda a, b: ssim(a, b, crop_border=2)}
    if args.threads:
        torch.set_num_threads(args.threads)
    bic = {"psnr": 0.0, "ssim": 0.0}
    for i in range(len(val)):
        _, lq, gt = val[i]
        up = imresize(lq, 2.0)
        bic["psnr"] += fns["psnr"](up, gt) / len(val)
        bic["ssim"] += fns["ssim"](up, gt) / len(val)
    torch.manual_seed(args.seed)  # the trainer seeds the same way before building the model
    before = evaluate(lightsr.create_model("dlgsanet_tiny", 2), val, fns, torch.device("cpu"))

    cmd = [sys.executable, "-m", "lightsr", "train", str(cfg_path)] + (["--resume", "auto"] if args.resume else [])
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    proc = subprocess.Popen(cmd)
    try:
        proc.wait(timeout=args.minutes * 60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the trainer checkpoints and exits (code 143)
        proc.wait()
    wall = time.time() - t0
    if proc.returncode not in (0, 143):
        print(f"training failed with exit code {proc.returncode}", file=sys.stderr)
        return 1

    from lightsr.train.checkpoint import latest_checkpoint

    cs = latest_checkpoint(out)
    ema_model = lightsr.load_model(cs.safetensors)
    raw_model = lightsr.load_model(cs.pth, key="params")
    after_ema = evaluate(ema_model, val, fns, torch.device("cpu"))
    after_raw = evaluate(raw_model, val, fns, torch.device("cpu"))
    import csv

    with open(out / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    speed = cs.iteration / float(rows[-1]["elapsed_s"]) if rows else float("nan")
    print()
    print(f"dlgsanet_tiny x2, {cs.iteration} iterations of batch {args.batch} x LR patch {args.patch} "
          f"in {wall / 60:.1f} min wall ({speed:.2f} it/s incl. validation), {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores")
    print()
    print("| Set5 x2 (Y, crop 2) | PSNR (dB) | SSIM |")
    print("|---|---|---|")
    print(f"| bicubic (MATLAB imresize) | {bic['psnr']:.3f} | {bic['ssim']:.4f} |")
    print(f"| dlgsanet_tiny before training | {before['psnr']:.3f} | {before['ssim']:.4f} |")
    print(f"| dlgsanet_tiny after, EMA weights (params_ema) | {after_ema['psnr']:.3f} | {after_ema['ssim']:.4f} |")
    print(f"| dlgsanet_tiny after, raw weights (params) | {after_raw['psnr']:.3f} | {after_raw['ssim']:.4f} |")
    best = max(after_ema["psnr"], after_raw["psnr"])
    print()
    print(f"trained model {'beats' if best > bic['psnr'] else 'does NOT beat'} bicubic by {best - bic['psnr']:+.3f} dB")
    return 0 if best > bic["psnr"] else 1


if __name__ == "__main__":
    sys.exit(main())
