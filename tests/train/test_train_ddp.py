"""Data-parallel training with torchrun on gloo (CPU): replicas stay identical, rank 0 alone writes,
and the effective batch is split across ranks (the result matches one process with the whole batch)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from train_helpers import env, load_pth, tiny_config, write_config


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch built without gloo")
def test_torchrun_two_processes_gloo(tmp_path):
    from lightsr.cli import main

    cfg = tiny_config(tmp_path, "ddp", total_iter=6)
    cfg["datasets"]["train"]["num_worker_per_gpu"] = 0
    cfg["logger"].update(save_checkpoint_freq=3, print_freq=3, keep_checkpoints=0)
    cfg["val"]["val_freq"] = 3
    path = write_config(cfg, tmp_path / "ddp.yaml")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lightsr", "train", str(path), "--quiet"]
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "is deprecated" not in proc.stderr, proc.stderr  # e.g. DDP's broadcast_buffers on torch >= 2.13
    root = tmp_path / "runs" / "ddp"
    log = (root / "train.log").read_text()
    assert "cpu x 2 process(es)" in log and "batch 2 per process = 4 effective" in log
    assert log.count("replicas identical on all 2 ranks") == 2  # checked at every checkpoint
    # one checkpoint set per saved iteration, written once (rank 0), no leftovers
    assert sorted(p.name for p in (root / "models").iterdir()) == [
        "net_g_3.pth", "net_g_3.safetensors", "net_g_6.pth", "net_g_6.safetensors",
        "net_g_best.safetensors", "net_g_latest.safetensors"]
    assert sorted(p.name for p in (root / "training_states").iterdir()) == ["3.state", "6.state"]
    assert not [p for p in root.rglob(".*") if p.is_file()]
    state = torch.load(root / "training_states" / "6.state", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # every rank's RNG state is kept
    assert log.count("validation tinyval @ 3") == 1  # logged by rank 0 only

    # one process with the same effective batch sees the same samples: same weights up to the
    # floating-point order of the gradient averaging
    single = tiny_config(tmp_path, "single", total_iter=6)
    single["datasets"]["train"]["num_worker_per_gpu"] = 0
    single["logger"].update(save_checkpoint_freq=3, print_freq=3)
    assert main(["train", str(write_config(single, tmp_path / "single.yaml")), "--quiet"]) == 0
    a = load_pth(root / "models" / "net_g_6.pth")["params"]
    b = load_pth(tmp_path / "runs" / "single" / "models" / "net_g_6.pth")["params"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
