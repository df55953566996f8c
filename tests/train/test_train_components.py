"""Schedules, EMA, losses, checkpoint files and RNG capture."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn as nn

from lightsr.train.checkpoint import (
    CheckpointSet,
    atomic_torch_save,
    capture_rng,
    find_checkpoints,
    latest_checkpoint,
    prune_checkpoints,
    remove_stale_temp_files,
    restore_rng,
)
from lightsr.train.config import OptimConfig, PixelLossConfig, SchedulerConfig
from lightsr.train.ema import ModelEMA, unwrap
from lightsr.train.optim import LRSchedule, build_loss, build_optimizer


def test_multistep_matches_torch_in_basicsr_order():
    """BasicSR steps the scheduler before each iteration: lr at iteration i (1-based) = torch's after i steps."""
    cfg = SchedulerConfig(type="MultiStepLR", milestones=[3, 5], gamma=0.5)
    sched = LRSchedule(cfg, 1e-3, 10)
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-3)
    ref = torch.optim.lr_scheduler.MultiStepLR(opt, [3, 5], 0.5)
    for it in range(1, 9):
        opt.step()
        ref.step()
        assert sched.lr_at(it) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
    assert sched.lr_at(2) == 1e-3 and sched.lr_at(3) == 5e-4 and sched.lr_at(5) == 2.5e-4


def test_cosine_matches_torch_and_ends_at_eta_min():
    cfg = SchedulerConfig(type="CosineAnnealingLR", eta_min=1e-7)
    sched = LRSchedule(cfg, 5e-4, 100)
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=5e-4)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100, eta_min=1e-7)
    for it in range(1, 101):
        opt.step()
        ref.step()
        assert sched.lr_at(it) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15)
    assert sched.lr_at(100) == pytest.approx(1e-7)
    assert sched.lr_at(150) == pytest.approx(1e-7)  # stays at the bound after T_max


def test_cosine_restart_and_warmup():
    cfg = SchedulerConfig(type="CosineAnnealingRestartLR", periods=[10, 10], restart_weights=[1, 0.5], eta_min=0)
    s = LRSchedule(cfg, 1.0, 20, warmup_iter=4)
    assert s.lr_at(2) == pytest.approx(0.5 * (0.5 * (1 + math.cos(math.pi * 2 / 10))))
    assert s.lr_at(10) == pytest.approx(0.0, abs=1e-12)
    assert s.lr_at(11) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi / 10)))
    const = LRSchedule(SchedulerConfig(type="ConstantLR"), 0.1, 5)
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    assert const.apply(opt, 3) == 0.1 and opt.param_groups[0]["lr"] == 0.1


def test_optimizers_and_losses():
    p = [nn.Parameter(torch.ones(2))]
    assert isinstance(build_optimizer(p, OptimConfig(type="AdamW", weight_decay=0.01)), torch.optim.AdamW)
    sgd = build_optimizer(p, OptimConfig(type="SGD", lr=0.1, momentum=0.9))
    assert sgd.param_groups[0]["momentum"] == 0.9
    a, b = torch.zeros(4), torch.full((4,), 0.5)
    assert build_loss(PixelLossConfig())(a, b).item() == 0.5
    assert build_loss(PixelLossConfig(type="MSELoss", loss_weight=2.0))(a, b).item() == 0.5
    assert build_loss(PixelLossConfig(type="CharbonnierLoss"))(a, b).item() == pytest.approx(0.5)


def test_ema_follows_basicsr_update():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    ema = ModelEMA(model, 0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model(torch.rand(2, 3, 8, 8))  # changes BatchNorm running stats (buffers)
    ema.update(model)
    for name, p in model.named_parameters():
        expected = 0.9 * start[name] + 0.1 * p.detach()
        assert torch.allclose(dict(ema.module.named_parameters())[name], expected)
    # buffers are not averaged (BasicSR semantics): they stay as copied at creation
    assert torch.equal(ema.module.state_dict()["1.running_mean"], start["1.running_mean"])
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert unwrap(model) is model
    with pytest.raises(ValueError):
        ModelEMA(model, 1.0)


def _ema_pair(foreach):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 3, 1))
    ema = ModelEMA(model, 0.999, warmup=True, foreach=foreach)
    return model, ema


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_ema_fused_update_equals_the_per_parameter_one(device):
    """On CUDA one _foreach_lerp_ over all parameters (the default there); on the CPU the BasicSR
    loop stays the default, bit for bit; the two agree up to float rounding."""
    loop_model, loop = _ema_pair(False)
    model, fused = _ema_pair(None if device == "cuda" else True)
    model.to(device)
    fused.module.to(device)
    want = {k: v.clone() for k, v in loop.module.named_parameters()}
    for it in range(1, 6):
        with torch.no_grad():
            for p, q in zip(model.parameters(), loop_model.parameters()):
                step = torch.randn_like(q)
                q.add_(step)
                p.add_(step.to(device))
        decay = loop.decay_at(it)
        for k, p in loop_model.named_parameters():
            want[k] = want[k].mul(decay).add(p.detach(), alpha=1 - decay)
        loop.update(loop_model, it)
        fused.update(model, it)
    for k, p in loop.module.named_parameters():
        assert torch.equal(p, want[k])  # the default on the CPU: exactly BasicSR's arithmetic
        torch.testing.assert_close(dict(fused.module.named_parameters())[k].cpu(), p, rtol=1e-5, atol=1e-6)
    assert ModelEMA(loop_model, 0.9).foreach is None  # automatic: fused only where the EMA is on CUDA


def test_rng_capture_round_trip_is_weights_only_loadable(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    state = capture_rng()
    atomic_torch_save({"rng": state}, tmp_path / "s.state")
    expected = (random.random(), np.random.random(), np.random.normal(), torch.rand(3))
    loaded = torch.load(tmp_path / "s.state", weights_only=True)["rng"]
    restore_rng(loaded)
    got = (random.random(), np.random.random(), np.random.normal(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def _fake_set(root, it, complete=True):
    cs = CheckpointSet(root, it)
    for f in cs.files()[1:]:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"w")
    if complete:
        atomic_torch_save({"iter": it}, cs.state)
    return cs


def test_find_and_prune_checkpoints(tmp_path):
    for it in (5, 10, 15, 20):
        _fake_set(tmp_path, it)
    _fake_set(tmp_path, 25, complete=False)  # killed while writing: weights present, no state
    (tmp_path / "training_states" / ".30.state.abc.tmp").write_bytes(b"partial")
    assert [c.iteration for c in find_checkpoints(tmp_path)] == [5, 10, 15, 20]
    assert latest_checkpoint(tmp_path).iteration == 20
    assert prune_checkpoints(tmp_path, 2) == [5, 10]
    assert [c.iteration for c in find_checkpoints(tmp_path)] == [15, 20]
    assert not (tmp_path / "models" / "net_g_5.pth").exists()
    assert prune_checkpoints(tmp_path, 0) == []
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_stale_temp_files_of_a_killed_write_are_removed(tmp_path):
    _fake_set(tmp_path, 5)
    stale = [tmp_path / "models" / ".net_g_latest.safetensors.uceba8am.tmp",
             tmp_path / "training_states" / ".10.state.k2_9abcd.tmp",
             tmp_path / ".train_log.csv.a1b2c3d4.tmp"]
    keep = [tmp_path / "models" / "net_g_latest.safetensors", tmp_path / "models" / ".notes.tmp",
            tmp_path / "visualization" / ".img.png.a1b2c3d4.tmp", tmp_path / "models" / "x.a1b2c3d4.tmp"]
    for p in stale + keep:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)
    assert [c.iteration for c in find_checkpoints(tmp_path)] == [5]
    # pruning after a save clears them too
    stale[0].write_bytes(b"partial")
    prune_checkpoints(tmp_path, 2)
    assert not stale[0].exists()


def test_ema_warmup_decay():
    model = nn.Linear(2, 2)
    ema = ModelEMA(model, 0.999, warmup=True)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(90) == pytest.approx(0.91)
    assert ema.decay_at(10**6) == 0.999
    assert ModelEMA(model, 0.999).decay_at(1) == 0.999  # BasicSR: constant


def test_pretrained_x2_into_x4_non_strict(tmp_path):
    import lightsr
    from lightsr.train.trainer import load_pretrained
    from lightsr.weights import CheckpointError

    opts = dict(dim=12, groups=1, blocks=1, num_heads=2)
    x2 = lightsr.create_model("dlgsanet_tiny", 2, **opts)
    path = lightsr.save_model(x2, tmp_path / "x2.safetensors")
    x4 = lightsr.create_model("dlgsanet_tiny", 4, **opts)
    with pytest.raises(CheckpointError, match="strict_load_g: false"):
        load_pretrained(x4, str(path), None, strict=True)
    report = load_pretrained(x4, str(path), None, strict=False)
    assert report.startswith("loaded ") and "skipped for shape (e.g. upsample" in report
    sd2, sd4 = x2.state_dict(), x4.state_dict()
    shared = [k for k in sd4 if k in sd2 and sd2[k].shape == sd4[k].shape]
    assert len(shared) > len(sd4) // 2
    assert all(torch.equal(sd2[k], sd4[k]) for k in shared)
    same = lightsr.create_model("dlgsanet_tiny", 2, **opts)
    assert load_pretrained(same, str(path), None, strict=True).startswith("loaded all")
    with pytest.raises(CheckpointError, match=r"only 1 of \d+ tensors of lgun x2 match"):
        load_pretrained(lightsr.create_model("lgun", 2), str(path), None, strict=False)


def test_metric_functions_default_crop_is_the_scale():
    from lightsr.metrics import psnr
    from lightsr.train.config import MetricConfig
    from lightsr.train.validate import metric_functions

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    fns = metric_functions({"psnr": MetricConfig("calculate_psnr"), "p0": MetricConfig("psnr", crop_border=0)}, 3)
    assert fns["psnr"](a, b) == psnr(a, b, crop_border=3) and fns["p0"](a, b) == psnr(a, b, crop_border=0)


def test_thread_default_is_fixed_and_warns_on_a_busy_machine(monkeypatch, caplog):
    """Training keeps cores / local processes (a resumed run computes like the original) and says
    when other work already occupies cores."""
    import logging

    from lightsr.inference import policy
    from lightsr.train import trainer

    monkeypatch.setattr(policy, "usable_cores", lambda: 2)
    monkeypatch.setattr(policy, "_load", lambda: 1.2)
    assert trainer._default_threads(1) == 2 and trainer._default_threads(2) == 1
    with caplog.at_level(logging.WARNING, logger="lightsr.train"):
        trainer._warn_if_busy(2, 1)
    assert "train.num_threads: 1" in caplog.text
    caplog.clear()
    monkeypatch.setattr(policy, "_load", lambda: 0.1)
    trainer._warn_if_busy(2, 1)
    assert not caplog.text
