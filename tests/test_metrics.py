"""PSNR / SSIM / Y conversion: hand-computed synthetic cases (always run) and the golden values of
BasicSR's metric README on Set14 baboon / comic (needs ../shared)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_path
from lightsr.data.imresize import imresize, modcrop
from lightsr.metrics import gaussian_window, psnr, rgb_to_y, ssim, to_uint8


def test_rgb_to_y_bt601_studio_swing():
    px = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    y = rgb_to_y(px)[0]
    np.testing.assert_allclose(y, [16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966], atol=1e-12)
    # not rounded by default; MATLAB-uint8 variant rounds (16.8588 -> 17, 81.481 -> 81)
    one = np.array([[[1, 1, 1], [255, 0, 0]]], np.uint8)
    np.testing.assert_allclose(rgb_to_y(one)[0], [16 + 219 / 255, 81.481], atol=1e-12)
    np.testing.assert_array_equal(rgb_to_y(one, round_y=True)[0], [17.0, 81.0])
    # gray = R = G = B, or (gray_as_y) the value itself
    g = np.array([[0, 100, 255]], np.uint8)
    np.testing.assert_allclose(rgb_to_y(g)[0], 16 + np.array([0, 100, 255]) * 219 / 255, atol=1e-12)
    np.testing.assert_array_equal(rgb_to_y(g, gray_as_y=True)[0], [0, 100, 255])
    np.testing.assert_allclose(rgb_to_y(np.repeat(g[..., None], 3, axis=2)), rgb_to_y(g), atol=1e-12)


def test_psnr_hand_computed():
    a = np.zeros((16, 16, 3), np.uint8)
    b = a.copy()
    b[8, 8] = 255  # 3 of 768 values differ by 255: MSE = 255^2 / 256
    assert psnr(a, b, y_channel=False) == pytest.approx(10 * math.log10(256), abs=1e-12)
    # Y: black vs white differ by 235 - 16 = 219 everywhere
    w = np.full_like(a, 255)
    assert psnr(a, w) == pytest.approx(20 * math.log10(255 / 219), abs=1e-12)
    assert psnr(a, w, y_channel=False) == pytest.approx(0.0, abs=1e-12)
    assert psnr(a, a) == math.inf
    # the differing pixel sits in the shaved border -> identical after the crop
    c = a.copy()
    c[0, 5] = 200
    assert psnr(a, c, crop_border=1) == math.inf
    assert psnr(a, c, crop_border=0) < math.inf
    # uint8 subtraction must not wrap around: 0 - 255 is 255, not 1
    assert psnr(a[..., 0], w[..., 0], y_channel=False) == pytest.approx(0.0, abs=1e-12)


def test_psnr_gray_conventions_differ_by_studio_scaling():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-9, 10, a.shape), 0, 255).astype(np.uint8)
    as_rgb = psnr(a, b)
    as_y = psnr(a, b, gray_as_y=True)
    assert as_rgb - as_y == pytest.approx(20 * math.log10(255 / 219), abs=1e-9)
    assert psnr(a, b, y_channel=False) == pytest.approx(as_y, abs=1e-12)


def test_ssim_constant_images_hand_computed():
    a = np.full((20, 20), 100, np.uint8)
    b = np.full((20, 20), 110, np.uint8)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 110 + c1) / (100**2 + 110**2 + c1)  # no variance: structure term is 1
    assert ssim(a, b, y_channel=False) == pytest.approx(expected, abs=1e-12)
    assert ssim(a, a, y_channel=False) == pytest.approx(1.0, abs=1e-12)
    rgb = np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    assert ssim(rgb, rgb) == pytest.approx(1.0, abs=1e-12)


def _ssim_bruteforce(a: np.ndarray, b: np.ndarray) -> float:
    """Direct transcription of Wang et al. 2004 (11x11 Gaussian window, 'valid'), one window at a time."""
    win = np.outer(gaussian_window(), gaussian_window())
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
            ma, mb = (win * pa).sum(), (win * pb).sum()
            va, vb = (win * pa * pa).sum() - ma * ma, (win * pb * pb).sum() - mb * mb
            cov = (win * pa * pb).sum() - ma * mb
            vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_matches_bruteforce_window():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (19, 23), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 31, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, b, y_channel=False) == pytest.approx(_ssim_bruteforce(a.astype(float), b.astype(float)), abs=1e-12)
    # RGB mode = mean of per-channel SSIM; Y mode = SSIM of the Y planes
    rgb_a = rng.integers(0, 256, (15, 16, 3), dtype=np.uint8)
    rgb_b = np.clip(rgb_a.astype(int) + rng.integers(-20, 21, rgb_a.shape), 0, 255).astype(np.uint8)
    per_channel = np.mean([_ssim_bruteforce(rgb_a[..., c].astype(float), rgb_b[..., c].astype(float)) for c in range(3)])
    assert ssim(rgb_a, rgb_b, y_channel=False) == pytest.approx(per_channel, abs=1e-12)
    assert ssim(rgb_a, rgb_b) == pytest.approx(_ssim_bruteforce(rgb_to_y(rgb_a), rgb_to_y(rgb_b)), abs=1e-12)


def test_gaussian_window():
    g = gaussian_window(11, 1.5)
    assert g.shape == (11,) and g.sum() == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_allclose(g, g[::-1])
    # MATLAB fspecial('gaussian', 11, 1.5) centre value
    assert np.outer(g, g)[5, 5] == pytest.approx(0.0707622, abs=1e-7)


def test_metric_input_errors():
    a = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, a[:8])
    with pytest.raises(ValueError, match="dtypes differ"):
        psnr(a, a.astype(np.float32))
    with pytest.raises(ValueError, match="too small"):
        psnr(a, a, crop_border=8)
    with pytest.raises(ValueError, match="11x11"):
        ssim(a[:10, :10], a[:10, :10])


def test_to_uint8():
    t = torch.tensor([[[-0.2, 0.0, 0.5 / 255, 1.5 / 255], [0.999, 1.0, 1.7, 128.4 / 255]]])  # (1, 2, 4)
    out = to_uint8(t)
    assert out.dtype == np.uint8 and out.shape == (2, 4, 1)
    np.testing.assert_array_equal(out[..., 0], [[0, 0, 0, 2], [255, 255, 255, 128]])  # ties to even
    chw = torch.rand(3, 5, 7)
    hwc = to_uint8(chw)
    assert hwc.shape == (5, 7, 3)
    np.testing.assert_array_equal(hwc, to_uint8(chw[None]))
    np.testing.assert_array_equal(hwc, to_uint8(chw.numpy().transpose(1, 2, 0)))
    assert to_uint8(torch.rand(5, 7)).shape == (5, 7)
    u8 = np.zeros((2, 2, 3), np.uint8)
    assert to_uint8(u8) is u8
    with pytest.raises(ValueError):
        to_uint8(torch.rand(2, 3, 4, 4))


# BasicSR docs/Metrics.md: Set14 baboon / comic, bicubic vs GT, crop_border 4 (MATLAB agrees on RGB).
# Their images: GT = HR modcropped to 12 (BasicSR's "GTmod12"), LR = BasicSR's float imresize by 1/4
# rounded once to uint8, bicubic = float imresize x4 of that LR rounded once.
GOLDEN = {  # name: (RGB PSNR, RGB SSIM, Y PSNR, Y SSIM)
    "baboon": (20.419710, 0.391853, 22.441898, 0.453097),
    "comic": (20.239912, 0.567738, 21.720398, 0.585511),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_basicsr_golden_values(name):
    path = shared_path("datasets", "benchmark", "Set14", "HR", f"{name}.png")
    gt = modcrop(np.asarray(Image.open(path).convert("RGB")), 12)
    lr = np.clip(np.floor(imresize(gt.astype(np.float64), 1 / 4) + 0.5), 0, 255)
    sr = np.clip(np.floor(imresize(lr, 4) + 0.5), 0, 255).astype(np.uint8)
    got = (psnr(sr, gt, 4, y_channel=False), ssim(sr, gt, 4, y_channel=False),
           psnr(sr, gt, 4), ssim(sr, gt, 4))
    # BasicSR converts to Y in float32: its Y values can be ~1e-6 off ours (float64)
    np.testing.assert_allclose(got, GOLDEN[name], atol=2e-6)
