"""lightsr.integrations.hub: the facts lightsr declares to spandrel and OpenModelDB hold."""
from __future__ import annotations

import pytest
import torch

import lightsr
from lightsr.integrations.hub import FAMILIES, shipped_options, size_tags
from lightsr.models import get_spec, list_models
from lightsr.pretrained import default_weights
from lightsr.weights import read_checkpoint

OURS = list_models(include_peers=False)


def test_size_tags_tell_the_variants_apart():
    tags = {name: size_tags(name) for name in OURS}
    assert tags["dlgsanet_tiny"] == ["48nf", "3ng", "3nb"] and tags["dlgsanet"] == ["90nf", "6ng", "4nb"]
    assert tags["lamnet_large"] == ["64nf", "5ng", "6nb"] and tags["lgun"] == ["64nf", "16nb"]
    assert len({tuple(t) for t in tags.values()}) == len(OURS)
    assert size_tags("lamnet", {"num_blocks": 3}) == ["64nf", "4ng", "3nb"]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


def _models():
    yield "dlgsanet_tiny x4 (shipped)", lightsr.load_model(default_weights("dlgsanet_tiny", 4))
    yield "lgun x4 (shipped)", lightsr.load_model(default_weights("lgun", 4))
    yield "lamnet x4 (random init)", lightsr.create_model("lamnet", 4, num_groups=2, num_blocks=2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_declared_precisions_run_with_cast_weights_on_the_cpu(dtype):
    """What spandrel's .half() / .bfloat16() do (weights and input cast, no autocast) gives finite
    output close to float32: fp16 within 2/255 everywhere, bf16 above 40 dB."""
    assert all(f.half and f.bfloat16 for f in FAMILIES.values())
    x = torch.rand(1, 3, 40, 40)
    for label, model in _models():
        assert get_spec(model.lightsr_config["name"]).family in FAMILIES
        with torch.inference_mode():
            ref = model.eval()(x).clamp(0, 1)
            out = model.to(dtype)(x.to(dtype)).float().clamp(0, 1)
        assert torch.isfinite(out).all(), label
        if dtype is torch.float16:
            assert (out - ref).abs().max() <= 2 / 255, label
        assert _psnr(out, ref) > 40, label


def test_shipped_options_recognise_only_the_shipped_tensors():
    sd, _ = read_checkpoint(default_weights("dlgsanet_tiny", 4))
    assert shipped_options("dlgsanet_tiny", 4, sd) == {"tlc": False}
    assert shipped_options("dlgsanet_tiny", 2, read_checkpoint(default_weights("dlgsanet_tiny", 2))[0]) == {}
    key = next(iter(sd))
    changed = {**sd, key: sd[key] + 1e-3}
    assert shipped_options("dlgsanet_tiny", 4, changed) is None
    assert shipped_options("dlgsanet_tiny", 4, {k: v for k, v in sd.items() if k != key}) is None
    assert shipped_options("lamnet_large", 4, lightsr.create_model("lamnet_large", 4).state_dict()) is None  # none shipped
