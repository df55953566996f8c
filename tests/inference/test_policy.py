"""--precision auto and the default thread count (lightsr.inference.policy)."""
from __future__ import annotations

import json

import pytest
import torch

from lightsr.inference import Upscaler, policy
from lightsr.pretrained import default_weights


def test_default_threads_leaves_busy_cores_alone(monkeypatch):
    monkeypatch.setattr(policy, "usable_cores", lambda: 2)
    assert policy.default_threads(load=0.0) == 2
    assert policy.default_threads(load=0.6) == 1  # one core busy: one thread
    assert policy.default_threads(load=5.0) == 1  # never below one
    assert policy.default_threads(processes=2, load=0.0) == 1
    monkeypatch.setattr(policy, "usable_cores", lambda: 16)
    assert policy.default_threads(load=3.4) == 13 and policy.default_threads(processes=4, load=0.0) == 4


def _shipped():
    path = default_weights("dlgsanet_tiny", 4)
    if path is None:
        pytest.skip("no shipped dlgsanet_tiny x4 weights")
    return path


def test_auto_precision(monkeypatch, tmp_path):
    path = _shipped()
    cpu = torch.device("cpu")
    monkeypatch.setattr(policy, "native_bf16", lambda: False)
    assert policy.auto_precision(cpu, path)[0] == "fp32"
    monkeypatch.setattr(policy, "native_bf16", lambda: True)
    assert policy.auto_precision(cpu, path) == ("bf16", policy.auto_precision(cpu, path)[1])
    assert "Set5 within" in policy.auto_precision(cpu, path)[1]
    assert policy.auto_precision(torch.device("cuda"), path)[0] == "fp32"
    assert policy.auto_precision(cpu, None)[0] == "fp32"  # unknown weights
    # a measurement beyond the tolerance keeps fp32
    table = json.loads(policy._MEASUREMENTS.read_text())
    for v in table.values():
        v["set5_bf16"] = v["set5_fp32"] - 0.05
    fake = tmp_path / "precision.json"
    fake.write_text(json.dumps(table))
    monkeypatch.setattr(policy, "_MEASUREMENTS", fake)
    choice, why = policy.auto_precision(cpu, path)
    assert choice == "fp32" and "0.050 dB" in why


def test_upscaler_auto_uses_the_policy(monkeypatch):
    _shipped()
    monkeypatch.setattr(policy, "native_bf16", lambda: True)
    up = Upscaler("dlgsanet_tiny", 4, device="cpu")
    assert up.runner.precision == "bf16" and up.precision_note.startswith("auto: bf16")
    monkeypatch.setattr(policy, "native_bf16", lambda: False)
    up = Upscaler("dlgsanet_tiny", 4, device="cpu")
    assert up.runner.precision == "fp32" and "no native bf16" in up.precision_note
    assert Upscaler("dlgsanet_tiny", 4, device="cpu", precision="fp32").precision_note is None


def test_bf16_runner_runs_plain_conv_nets_channels_last():
    """A peer model without its own layout switch runs channels-last under bf16 (oneDNN's fast path)."""
    import lightsr

    seen = []
    net = lightsr.create_model("imdn", 4).eval()
    net.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)))
    up = Upscaler(net, tile=0, precision="bf16", device="cpu")
    out = up.upscale_pixels(torch.randint(0, 255, (20, 24, 3), dtype=torch.uint8).numpy())
    assert out.shape == (80, 96, 3) and seen == [True]
