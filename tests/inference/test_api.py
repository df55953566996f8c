"""lightsr.upscale: input kinds in = kinds out, alpha without fringes, gray stays gray, precision."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import lightsr
from lightsr.inference import Upscaler, WeightsMissing, load_upscale_model

RNG = np.random.default_rng(0)


class Nearest(nn.Module):
    """Deterministic x2 'model': nearest-neighbour upscaling (exact, so results can be predicted)."""

    scale = 2

    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="nearest")


class Bicubic(nn.Module):
    scale = 2

    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)


def nearest(a):
    return a.repeat(2, 0).repeat(2, 1)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("channels", [None, 1, 3])
def test_numpy_kinds_round_trip(dtype, channels):
    shape = (11, 13) if channels is None else (11, 13, channels)
    if np.issubdtype(dtype, np.floating):
        a = RNG.random(shape).astype(dtype)
    else:
        a = RNG.integers(0, np.iinfo(dtype).max + 1, size=shape).astype(dtype)
    out = lightsr.upscale(a, Nearest())
    assert out.dtype == a.dtype and out.shape == (22, 26) + shape[2:]
    if channels in (None, 1):  # gray: replicated, then BT.601 luma of equal channels = the value itself
        tol = 1e-6 if np.issubdtype(dtype, np.floating) else 1
        assert np.abs(out.astype(np.float64) - nearest(a).astype(np.float64)).max() <= tol
    else:
        np.testing.assert_allclose(out, nearest(a), atol=1e-6)


def test_16bit_uses_full_range():
    a = (RNG.integers(0, 65536, size=(6, 7, 3))).astype(np.uint16)
    out = lightsr.upscale(a, Nearest())
    np.testing.assert_array_equal(out, nearest(a))  # low byte kept: fed as float of the full 16 bits


def test_tensor_kinds():
    t = torch.rand(2, 3, 9, 10, dtype=torch.float64)
    out = lightsr.upscale(t, Nearest())
    assert out.dtype == torch.float64 and out.shape == (2, 3, 18, 20)
    torch.testing.assert_close(out, F.interpolate(t, scale_factor=2), atol=1e-6, rtol=0)
    u = torch.randint(0, 256, (3, 5, 6), dtype=torch.uint8)
    assert lightsr.upscale(u, Nearest()).dtype == torch.uint8


@pytest.mark.parametrize("mode,out_mode", [("RGB", "RGB"), ("RGBA", "RGBA"), ("LA", "LA"), ("L", "L"), ("P", "RGB"), ("1", "L"), ("I;16", "I;16")])
def test_pil_kinds(mode, out_mode):
    base = Image.fromarray(RNG.integers(0, 256, size=(8, 9, 3), dtype=np.uint8))
    if mode == "I;16":
        im = Image.fromarray(RNG.integers(0, 65536, size=(8, 9), dtype=np.uint16))
    else:
        im = base.convert(mode)
    out = lightsr.upscale(im, Nearest(), alpha="model")
    assert out.mode == out_mode and out.size == (18, 16)


def test_opaque_alpha_stays_opaque():
    a = RNG.integers(0, 256, size=(10, 12, 4), dtype=np.uint8)
    a[..., 3] = 255
    for alpha in ("bicubic", "model"):
        out = lightsr.upscale(a, Bicubic(), alpha=alpha)
        assert (out[..., 3] == 255).all()


def test_premultiplied_alpha_has_no_dark_fringe():
    # opaque red disc on a transparent *black* background
    yy, xx = np.mgrid[:32, :32]
    a = np.zeros((32, 32, 4), np.uint8)
    inside = (yy - 16) ** 2 + (xx - 16) ** 2 < 100
    a[inside] = (255, 0, 0, 255)
    for alpha in ("bicubic", "model"):
        out = lightsr.upscale(a, Bicubic(), alpha=alpha)
        visible = out[..., 3] > 8
        edge = visible & (out[..., 3] < 247)
        assert edge.sum() > 20  # there is a soft edge
        # straight (unpremultiplied) colour at semi-transparent pixels is still red, not darkened
        assert out[visible, 0].min() >= 240, alpha
        assert out[visible, 1:3].max() <= 15, alpha
    # the naive way (colour and alpha upscaled independently) does darken the edge: the test can tell
    naive = F.interpolate(torch.from_numpy(a[..., :3]).permute(2, 0, 1)[None].float() / 255, scale_factor=2, mode="bicubic")
    naive_alpha = lightsr.upscale(a, Bicubic())[..., 3] > 8
    assert (naive[0, 0].numpy()[naive_alpha] * 255).min() < 200


def test_la_alpha_and_gray_exact_with_nearest():
    a = RNG.integers(1, 256, size=(7, 8, 2), dtype=np.uint8)
    out = lightsr.upscale(a, Nearest(), alpha="model")
    np.testing.assert_array_equal(out[..., 1], nearest(a)[..., 1])
    assert np.abs(out[..., 0].astype(int) - nearest(a)[..., 0]).max() <= 1  # premultiply round trip


def test_model_by_name_without_weights_refuses():
    with pytest.raises(WeightsMissing, match="weights"):
        lightsr.upscale(np.zeros((4, 4, 3), np.uint8), "lamnet_large", 4)


def test_weights_file_and_scale_mismatch(tmp_path):
    model = lightsr.create_model("lamnet", 2, num_groups=1, num_blocks=1, dim=16)
    path = lightsr.save_model(model, tmp_path / "tiny_x2.safetensors")
    net, scale = load_upscale_model(None, None, path)
    assert scale == 2 and net.lightsr_config["name"] == "lamnet"
    with pytest.raises(lightsr.CheckpointError, match="x2"):
        load_upscale_model(None, 4, path)
    out = lightsr.upscale(RNG.integers(0, 256, size=(12, 10, 3), dtype=np.uint8), weights=path, tile=0)
    assert out.shape == (24, 20, 3)


class NaNInReducedPrecision(nn.Module):
    scale = 2

    def forward(self, x):
        y = F.interpolate(x, scale_factor=2, mode="nearest")
        if torch.is_autocast_enabled("cpu"):
            return y * float("nan")
        return y


def test_nan_tile_recomputed_in_fp32():
    msgs = []
    up = Upscaler(NaNInReducedPrecision(), precision="bf16", device="cpu", tile=16, tile_overlap=4, warn=msgs.append)
    a = RNG.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(up(a), nearest(a))
    assert up.runner.stats.fp32_retries == up.runner.stats.tiles > 1
    assert any("NaN" in m for m in msgs)


def test_fp16_on_cpu_falls_back_with_a_message():
    msgs = []
    up = Upscaler(Nearest(), precision="fp16", device="cpu", warn=msgs.append)
    assert up.runner.precision == "fp32" and any("fp16" in m for m in msgs)


def test_bf16_on_cpu_runs_close_to_fp32():
    torch.manual_seed(0)
    model = lightsr.create_model("lamnet", 2, num_groups=1, num_blocks=1, dim=16)
    a = RNG.random((16, 16, 3)).astype(np.float32)
    ref = Upscaler(model, device="cpu", tile=0)(a)
    low = Upscaler(model, device="cpu", precision="bf16", tile=0)(a)
    assert np.abs(ref - low).max() < 0.05


def test_rejects_paths_and_odd_shapes():
    with pytest.raises(TypeError, match="path"):
        lightsr.upscale("photo.png", Nearest())
    with pytest.raises(ValueError):
        lightsr.upscale(np.zeros((4, 4, 5), np.uint8), Nearest())
