"""Every model x scale: exact parameter counts, official key layout, forward shapes and dtypes."""
from __future__ import annotations

import pytest
import torch

from lightsr.models import count_parameters, create_model, get_spec, list_models
from official_layout import OFFICIAL

OURS = ["dlgsanet_tiny", "dlgsanet_light", "dlgsanet", "lgun", "lamnet", "lamnet_large"]
SCALES = [2, 3, 4]

# design/architectures.md section 0: counts of the official code (DLGSANet, LAMNet), exact
OFFICIAL_PARAMS = {
    "dlgsanet_tiny": {2: 565_710, 3: 572_205, 4: 581_298},
    "dlgsanet_light": {2: 745_188, 3: 751_683, 4: 760_776},
    "dlgsanet": {2: 4_733_724, 3: 4_745_889, 4: 4_762_920},
    "lamnet": {2: 828_364, 3: 837_019, 4: 849_136},
    "lamnet_large": {2: 1_024_028, 3: 1_032_683, 4: 1_044_800},
}
LGUN_PAPER = {2: 675_000, 3: 684_000, 4: 696_000}  # paper Table 2 (no code exists)


def test_registry_lists_all_models():
    assert set(OURS) <= set(list_models())


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", OURS)
def test_parameter_count(name, scale):
    with torch.device("meta"):
        n = count_parameters(create_model(name, scale))
    if name == "lgun":
        assert abs(n - LGUN_PAPER[scale]) / LGUN_PAPER[scale] < 0.005, n
    else:
        assert n == OFFICIAL_PARAMS[name][scale]
        assert get_spec(name).official_params[scale] == n


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_state_dict_is_the_official_layout(name, scale):
    with torch.device("meta"):
        sd = create_model(name, scale).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == OFFICIAL[name](scale)


def test_lamnet_kernel_map_buffer_is_the_official_table():
    sd = create_model("lamnet", 4).state_dict()
    km = sd["deep_feature_extraction.0.mixers.0.fn.kernel_map"]
    assert km.dtype == torch.int32
    assert km.tolist() == [[-8, 4], [-6, 2], [-4, 2], [-3, 1], [-2, 1], [-1, 1], [0, 1],
                           [1, 1], [2, 1], [3, 1], [4, 2], [6, 2], [8, 4]]


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", OURS)
def test_forward_shapes_train_eval_fp32_bf16(name, scale):
    model = create_model(name, scale)
    for train in (True, False):
        model.train(train)
        for shape in [(1, 3, 17, 23), (2, 3, 40, 31)]:
            x = torch.rand(shape)
            with torch.no_grad():
                y = model(x)
                yb = model.to(torch.bfloat16)(x.to(torch.bfloat16))
                model.float()
            expected = (shape[0], 3, shape[2] * scale, shape[3] * scale)
            assert y.shape == expected and y.dtype == torch.float32
            assert yb.shape == expected and yb.dtype == torch.bfloat16
            assert torch.isfinite(y).all() and torch.isfinite(yb.float()).all()
            # bf16 follows fp32 closely (random init, relative to the output range)
            assert (yb.float() - y).abs().max() < 0.1 * (y.abs().max() + 1)


@pytest.mark.parametrize("name", OURS)
def test_training_step_under_bf16_autocast(name):
    """``train.amp: bf16`` path (autocast forward, float32 loss, backward outside autocast) on the
    CPU; the CUDA run is in benchmarks/cuda_check.py. LAMNet's depth-wise conv op used to raise here."""
    model = create_model(name, 4).train()
    x, y = torch.rand(2, 3, 12, 12), torch.rand(2, 3, 48, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    torch.nn.functional.l1_loss(out.float(), y).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", OURS)
def test_one_pixel_input(name):
    model = create_model(name, 2).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 1, 1)).shape == (1, 3, 2, 2)


@pytest.mark.parametrize("name", OURS)
def test_backward_reaches_every_parameter(name):
    model = create_model(name, 2).train()
    model(torch.rand(2, 3, 12, 10)).abs().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


def test_unknown_option_is_a_clear_error():
    with pytest.raises(TypeError, match="unknown option.*tlc_size.*valid options"):
        create_model("dlgsanet_light", 4, tlc_size=3)
    with pytest.raises(ValueError, match="scales"):
        create_model("lamnet", 8)
    with pytest.raises(KeyError, match="unknown model"):
        create_model("swinir", 4)
