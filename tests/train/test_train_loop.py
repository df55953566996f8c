"""The loop's options end to end (in this process, tiny model): schedules in the log, TensorBoard,
saved validation images, gradient clipping, EMA warm-up, paired data, non-finite loss handling."""
from __future__ import annotations

import csv
import importlib.util

import pytest
import torch

from lightsr.train import load_config, train
from train_helpers import make_images, tiny_config, write_config


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_options_end_to_end(tmp_path):
    cfg = tiny_config(tmp_path, "opts", total_iter=8, grad_clip_norm=0.5, ema_warmup=True, warmup_iter=4,
                      deterministic=False)
    cfg["train"]["scheduler"] = {"type": "CosineAnnealingLR", "eta_min": 1e-7}
    cfg["train"]["optim_g"] = {"type": "AdamW", "lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 1e-4}
    cfg["datasets"]["train"].update(num_worker_per_gpu=0, preload=False, small_images="pad", lq_size=24)
    cfg["val"].update(val_freq=4, save_img=True)
    cfg["logger"].update(print_freq=2, save_checkpoint_freq=4)
    tb = importlib.util.find_spec("tensorboard") is not None  # optional extra: checked when installed
    cfg["logger"]["use_tb_logger"] = tb
    assert train(load_config(write_config(cfg, tmp_path / "o.yaml")), console=False) == 0
    root = tmp_path / "runs" / "opts"
    rows = _rows(root / "train_log.csv")
    assert [int(r["iter"]) for r in rows] == [2, 4, 6, 8]
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(1e-3 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 2 / 8)).item()) * 2 / 4, rel=1e-4)
    assert lrs[-1] == pytest.approx(1e-7, rel=1e-3)  # cosine reaches its bound at total_iter
    val = _rows(root / "val_log.csv")
    assert [(r["iter"], r["dataset"]) for r in val] == [("4", "tinyval"), ("8", "tinyval")]
    assert sorted(p.name for p in (root / "visualization" / "tinyval").iterdir()) == [
        "im00_4.png", "im00_8.png", "im01_4.png", "im01_8.png"]
    if tb:
        assert list((root / "tb").glob("events.out.tfevents.*"))
    state = torch.load(root / "training_states" / "8.state", weights_only=True)
    assert state["best"]["iter"] in (4, 8) and state["best"]["metric"] == "psnr"
    assert (root / "config.yaml").is_file() and "opts" in (root / "train.log").read_text()


def test_paired_training_data(tmp_path):
    import numpy as np
    from PIL import Image

    from lightsr.data.imresize import imresize

    hr = make_images(tmp_path / "pair" / "HR", 4, (32, 32), 5)
    lr = tmp_path / "pair" / "LR"
    lr.mkdir()
    for p in hr.iterdir():
        Image.fromarray(imresize(np.asarray(Image.open(p)), 0.5)).save(lr / f"{p.stem}x2.png")
    cfg = tiny_config(tmp_path, "paired", total_iter=4)
    cfg["datasets"]["train"] = {"type": "PairedImageDataset", "dataroot_gt": str(hr), "dataroot_lq": str(lr),
                                "filename_tmpl": "{}x2", "gt_size": 16, "batch_size_per_gpu": 2,
                                "num_worker_per_gpu": 0, "dataset_enlarge_ratio": 2}
    assert train(load_config(write_config(cfg, tmp_path / "p.yaml")), console=False) == 0
    log = (tmp_path / "runs" / "paired" / "train.log").read_text()
    assert "4 training images x2" in log and "batch 2 per process = 2 effective" in log


def test_non_finite_loss_stops_without_saving(tmp_path):
    cfg = tiny_config(tmp_path, "nan", total_iter=50)
    cfg["train"]["optim_g"] = {"type": "SGD", "lr": 1e12, "momentum": 0.9}
    cfg["datasets"]["train"]["num_worker_per_gpu"] = 0
    cfg["logger"].update(print_freq=1, save_checkpoint_freq=1000)
    assert train(load_config(write_config(cfg, tmp_path / "n.yaml")), console=False) == 1
    root = tmp_path / "runs" / "nan"
    assert "stopping without saving" in (root / "train.log").read_text()
    assert not list(root.glob("training_states/*.state"))


def test_resume_falls_back_over_an_unreadable_checkpoint_and_reports_changes(tmp_path):
    cfg = tiny_config(tmp_path, "fallback", total_iter=10)
    cfg["datasets"]["train"]["num_worker_per_gpu"] = 0
    cfg["logger"].update(save_checkpoint_freq=5, keep_checkpoints=0)
    path = write_config(cfg, tmp_path / "f.yaml")
    assert train(load_config(path), console=False) == 0
    root = tmp_path / "runs" / "fallback"
    (root / "training_states" / "10.state").write_bytes(b"garbage")  # e.g. a disk that lied about a write
    assert train(load_config(path, ["train.total_iter=12"]), resume="auto", console=False) == 0
    log = (root / "train.log").read_text()
    assert "cannot read checkpoint 10" in log and "resuming at iteration 5 of 12" in log
    assert "changed settings: train.total_iter: 10 -> 12" in log
    assert (root / "training_states" / "12.state").is_file()
    with pytest.raises(Exception, match="does not fit network_g"):
        train(load_config(path, ["train.total_iter=14", "network_g.dim=18"]), resume="auto", console=False)
