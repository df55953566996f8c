"""A tiny, fast training set-up for end-to-end tests (no ../shared needed)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def make_images(folder: Path, n: int, size: tuple[int, int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = size
        base = rng.random((h // 4 + 2, w // 4 + 2, 3))
        img = np.kron(base, np.ones((4, 4, 1)))[:h, :w]
        Image.fromarray((img * 255).round().astype(np.uint8)).save(folder / f"im{i:02d}.png")
    return folder


def tiny_config(tmp: Path, name: str = "tiny", **train) -> dict:
    """A dlgsanet_tiny with one group of one block, 8-pixel LR patches, HR-only data (LR by imresize)."""
    hr = make_images(tmp / "data" / "hr", 6, (40, 40), 0)
    val = make_images(tmp / "data" / "val", 2, (24, 24), 1)
    cfg = {
        "name": name,
        "scale": 2,
        "num_gpu": 0,
        "manual_seed": 3,
        "datasets": {
            "train": {"type": "HRImageDataset", "dataroot_gt": str(hr), "lq_size": 8, "batch_size": 4,
                      "num_worker_per_gpu": 1, "lr_cache_dir": str(tmp / "cache")},
            "val": {"name": "tinyval", "type": "HRImageDataset", "dataroot_gt": str(val),
                    "lr_cache_dir": str(tmp / "cache")},
        },
        "network_g": {"type": "dlgsanet_tiny", "dim": 12, "groups": 1, "blocks": 1, "num_heads": 2},
        "path": {"experiments_root": str(tmp / "runs" / name)},
        "train": {"total_iter": 40, "ema_decay": 0.9, "deterministic": True, "num_threads": 1,
                  "optim_g": {"type": "Adam", "lr": 2e-3, "betas": [0.9, 0.99]},
                  "scheduler": {"type": "MultiStepLR", "milestones": [20, 30], "gamma": 0.5}},
        "val": {"val_freq": 20},
        "logger": {"print_freq": 5, "save_checkpoint_freq": 5, "keep_checkpoints": 2, "progress_bar": False},
    }
    cfg["train"].update(train)
    return cfg


def write_config(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO / "src") + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def lightsr_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "lightsr", *args]


def run_lightsr(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(lightsr_cmd(*args), env=env(), capture_output=True, text=True, timeout=timeout)


def load_pth(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"
