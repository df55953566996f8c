"""train.amp on the CPU (bf16 autocast, ``auto``), train.cuda_graphs / cudnn_benchmark switches, and
the EMA's fused update (issues 21 item 3 and 24 item 3)."""
from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import lightsr.inference.policy as policy
from lightsr.models import create_model
from lightsr.train import load_config, train
from lightsr.train.amp import resolve_amp
from lightsr.train.graph_step import GraphedStep
from train_helpers import assert_same_tensors, load_pth, tiny_config, write_config

CPU, GPU = torch.device("cpu"), torch.device("cuda")
CUDA = torch.cuda.is_available()


def _native(monkeypatch, value: bool) -> None:
    monkeypatch.setattr(policy, "native_bf16", lambda: value)


# -- resolution -----------------------------------------------------------------------------


@pytest.mark.parametrize("native, want", [(True, "bf16"), (False, "none")])
def test_auto_on_the_cpu_follows_native_bf16(monkeypatch, native, want):
    _native(monkeypatch, native)
    choice = resolve_amp("auto", CPU)
    assert choice.name == want and choice.dtype == (torch.bfloat16 if native else None)
    assert not choice.grad_scaler and not choice.warn
    assert choice.note.startswith(f"train.amp=auto: {'bf16' if native else 'float32'}")


@pytest.mark.parametrize("gpu_bf16, want", [(True, "bf16"), (False, "none")])
def test_auto_on_cuda_follows_the_gpu(monkeypatch, gpu_bf16, want):
    import lightsr.train.amp as amp

    monkeypatch.setattr(amp, "cuda_bf16", lambda: gpu_bf16)
    _native(monkeypatch, not gpu_bf16)  # the CPU's flags do not matter on a GPU
    assert resolve_amp("auto", GPU).name == want


def test_explicit_settings(monkeypatch):
    _native(monkeypatch, False)
    emulated = resolve_amp("bf16", CPU)
    assert emulated.name == "bf16" and emulated.warn and "emulated" in emulated.note
    _native(monkeypatch, True)
    native = resolve_amp("bf16", CPU)
    assert native.name == "bf16" and not native.warn
    fp16 = resolve_amp("fp16", CPU)
    assert fp16.name == "none" and fp16.warn and "CUDA only" in fp16.note
    assert resolve_amp("fp16", GPU).grad_scaler and resolve_amp("fp16", GPU).dtype == torch.float16
    assert resolve_amp("none", CPU).note == "" and resolve_amp("none", GPU).dtype is None


# -- one step ----------------------------------------------------------------------------------


def test_cpu_bf16_step_keeps_float32_weights_and_gradients():
    torch.manual_seed(0)
    model = create_model("dlgsanet_tiny", 2, dim=12, groups=1, blocks=1, num_heads=2).train()
    lq, gt = torch.rand(2, 3, 10, 10), torch.rand(2, 3, 20, 20)
    losses = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        model.zero_grad(set_to_none=True)
        losses[name] = GraphedStep(model, F.l1_loss, amp_dtype=dtype)(lq, gt)
        assert losses[name].dtype == torch.float32 and math.isfinite(losses[name].item())
        for p in model.parameters():
            assert p.dtype == torch.float32 and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
    assert losses["bf16"].item() != losses["fp32"].item()  # autocast did run in bf16
    assert losses["bf16"].item() == pytest.approx(losses["fp32"].item(), rel=0.05)


# -- end to end --------------------------------------------------------------------------------


def _run(tmp_path, name, total=4, extra=(), resume=None, **train_opts):
    cfg = tiny_config(tmp_path, name, total_iter=total, **train_opts)
    cfg["datasets"]["train"]["num_worker_per_gpu"] = 0
    cfg["logger"].update(print_freq=1, save_checkpoint_freq=2, keep_checkpoints=0)
    assert train(load_config(write_config(cfg, tmp_path / f"{name}.yaml"), list(extra)), resume=resume,
                 console=False) == 0
    root = tmp_path / "runs" / name
    with open(root / "train_log.csv", newline="") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    return root, losses, (root / "train.log").read_text()


def test_cpu_training_under_amp_auto_and_bf16(tmp_path, monkeypatch):
    _, fp32, _ = _run(tmp_path, "fp32")
    _native(monkeypatch, False)  # auto on a CPU without native bf16: exactly the float32 run
    root, losses, log = _run(tmp_path, "auto_off", amp="auto")
    assert losses == fp32 and log.count("train.amp=auto: float32") == 1
    _native(monkeypatch, True)  # with native bf16: bf16 autocast, logged once
    root, losses, log = _run(tmp_path, "auto_on", amp="auto")
    assert log.count("train.amp=auto: bf16") == 1 and "train.amp" not in log.split("train.amp=auto: bf16")[1]
    assert all(math.isfinite(v) for v in losses) and losses != fp32
    assert losses == pytest.approx(fp32, rel=0.05)
    weights = load_file(root / "models" / "net_g_latest.safetensors")
    assert weights and all(t.dtype == torch.float32 for t in weights.values())
    state = load_pth(root / "models" / "net_g_4.pth")
    assert all(t.dtype == torch.float32 for t in [*state["params"].values(), *state["params_ema"].values()])


def test_resumed_bf16_run_is_bit_identical(tmp_path, monkeypatch):
    _native(monkeypatch, True)
    ref, ref_losses, _ = _run(tmp_path, "ref", total=6, amp="bf16")
    cut, _, _ = _run(tmp_path, "cut", total=4, amp="bf16")  # checkpoints at 2 and 4: resume from 4
    cut, losses, log = _run(tmp_path, "cut", total=6, resume="auto", amp="bf16")
    assert "resuming at iteration 4 of 6" in log
    assert losses == ref_losses
    a, b = load_pth(ref / "models" / "net_g_6.pth"), load_pth(cut / "models" / "net_g_6.pth")
    assert_same_tensors(a["params"], b["params"])
    assert_same_tensors(a["params_ema"], b["params_ema"])


def test_cuda_graphs_on_the_cpu_fall_back_and_say_why(tmp_path):
    ref, ref_losses, _ = _run(tmp_path, "eager")
    root, losses, log = _run(tmp_path, "graphs", cuda_graphs=True)
    assert "train.cuda_graphs: not used (CUDA graphs need a CUDA device (this is cpu)); the step runs eagerly" in log
    assert losses == ref_losses
    assert_same_tensors(load_pth(ref / "models" / "net_g_4.pth")["params"],
                        load_pth(root / "models" / "net_g_4.pth")["params"])


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (CUDA graphs)")
def test_cuda_graphed_training_matches_eager(tmp_path):
    opts = dict(deterministic=False, amp="none")
    _, eager, _ = _run(tmp_path, "cuda_eager", total=6, extra=["num_gpu=1"], **opts)
    root, graphed, log = _run(tmp_path, "cuda_graphs", total=6, extra=["num_gpu=1"], cuda_graphs=True, **opts)
    assert "training step captured in a CUDA graph" in log and "runs eagerly" not in log
    assert graphed[0] == pytest.approx(eager[0], rel=1e-4)  # the first step: same weights, same batch
    assert all(math.isfinite(v) for v in graphed) and graphed == pytest.approx(eager, rel=0.05)


def test_resuming_a_checkpoint_older_than_the_new_keys_reports_no_change(tmp_path):
    """A checkpoint written before train.cuda_graphs / cudnn_benchmark existed: its config lacks them,
    and their defaults are no change (a changed value still is)."""
    root, _, _ = _run(tmp_path, "old", total=2)
    path = root / "training_states" / "2.state"
    state = torch.load(path, weights_only=True)
    lines = state["config"].splitlines()
    state["config"] = "\n".join(x for x in lines if "cuda_graphs" not in x and "cudnn_benchmark" not in x)
    assert state["config"] != "\n".join(lines)
    torch.save(state, path)
    _, _, log = _run(tmp_path, "old", total=3, resume="auto")
    assert "changed settings: train.total_iter: 2 -> 3\n" in log
    _, _, log = _run(tmp_path, "old", total=4, resume="auto", cudnn_benchmark=False)
    assert "changed settings: train.cudnn_benchmark: True -> False; train.total_iter: 3 -> 4\n" in log
