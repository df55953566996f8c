"""Peer baselines IMDN and PAN: parameter counts of the released checkpoints, shapes, detection,
strict loading of the real checkpoints in ../shared, and Set5 numbers against the papers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import lightsr
from conftest import shared_path
from lightsr.data.imresize import modcrop
from lightsr.metrics import psnr, ssim, to_uint8
from lightsr.models import count_parameters, create_model, get_spec, list_models
from lightsr.weights import CheckpointError, detect_architecture, read_checkpoint

PARAMS = {  # counted from the released checkpoints (weights/MANIFEST.md)
    "imdn": {2: 694_404, 3: 703_059, 4: 715_176},
    "pan": {2: 261_403, 3: 261_403, 4: 272_419},
}
FILES = {"imdn": "IMDN/IMDN_x{s}.pth", "pan": "PAN/PANx{s}_DF2K.pth"}
# Set5 PSNR / SSIM (Y, crop = scale) published by the papers (IMDN Table 3; PAN Table 3)
PUBLISHED_SET5 = {
    ("imdn", 2): (38.00, 0.9605), ("imdn", 3): (34.36, 0.9270), ("imdn", 4): (32.21, 0.8948),
    ("pan", 2): (38.00, 0.9605), ("pan", 3): (34.40, 0.9271), ("pan", 4): (32.13, 0.8948),
}


def test_registered_as_peers():
    assert {"imdn", "pan"} <= set(list_models())
    assert not {"imdn", "pan"} & set(list_models(include_peers=False))
    assert get_spec("imdn").peer and get_spec("pan").peer


@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_params_and_shapes(name, scale):
    model = create_model(name, scale).eval()
    assert count_parameters(model) == PARAMS[name][scale] == get_spec(name).official_params[scale]
    with torch.inference_mode():
        out = model(torch.rand(1, 3, 13, 17))
    assert out.shape == (1, 3, 13 * scale, 17 * scale) and out.dtype == torch.float32


@pytest.mark.parametrize("name, scale", [("imdn", 2), ("imdn", 3), ("imdn", 4), ("pan", 4)])
def test_detection_roundtrip(name, scale):
    sd = create_model(name, scale).state_dict()
    det = detect_architecture(sd)
    assert (det.name, det.scale, det.options) == (name, scale, {})
    # a DataParallel prefix is stripped before detection
    wrapped = {f"module.{k}": v for k, v in sd.items()}
    from lightsr.weights import canonical_state_dict

    assert detect_architecture(canonical_state_dict(wrapped)).name == name


def test_pan_x2_x3_need_the_scale(tmp_path):
    sd = create_model("pan", 3).state_dict()
    with pytest.raises(CheckpointError, match="identical shapes"):
        detect_architecture(sd)
    path = tmp_path / "pan_x3.pth"
    torch.save(sd, path)
    model = lightsr.load_model(path, name="pan", scale=3)
    assert model.scale == 3


def test_imdn_variant_options_detected():
    sd = create_model("imdn", 2, num_blocks=4, channels=32).state_dict()
    det = detect_architecture(sd)
    assert det.options == {"num_blocks": 4, "channels": 32}
    model = create_model("imdn", det.scale, **det.options)
    model.load_state_dict(sd, strict=True)


@pytest.mark.parametrize("name", sorted(FILES))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_real_checkpoints_load_strictly(name, scale):
    path = shared_path("weights", FILES[name].format(s=scale))
    sd, _ = read_checkpoint(path)
    model = lightsr.load_model(path, name=name, scale=scale)
    assert count_parameters(model) == PARAMS[name][scale]
    assert set(model.state_dict()) == set(sd)


@pytest.mark.parametrize("name, scale", [("imdn", 4), ("pan", 4)])
def test_set5_matches_paper(name, scale):
    root = shared_path("datasets", "benchmark", "Set5")
    model = lightsr.load_model(shared_path("weights", FILES[name].format(s=scale)), name=name, scale=scale)
    vals = []
    for hr_path in sorted((root / "HR").glob("*.png")):
        hr = modcrop(np.asarray(Image.open(hr_path).convert("RGB")), scale)
        lr = np.asarray(Image.open(root / "LR_bicubic" / f"X{scale}" / f"{hr_path.stem}x{scale}.png").convert("RGB"))
        with torch.inference_mode():
            sr = model(torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1)))[None].float() / 255)
        sr = to_uint8(sr[0])
        vals.append((psnr(sr, hr, scale), ssim(sr, hr, scale)))
    got_psnr, got_ssim = np.mean(vals, axis=0)
    want_psnr, want_ssim = PUBLISHED_SET5[(name, scale)]
    assert abs(got_psnr - want_psnr) <= 0.02, got_psnr
    assert abs(got_ssim - want_ssim) <= 0.0005, got_ssim
