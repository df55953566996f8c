"""MATLAB-compatible imresize: properties from conventions.md §2a and the bit-exact check against
the MATLAB-made LR files of Set5 / Set14."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_path
from lightsr.data.imresize import cubic, imresize, imresize_tensor, modcrop, output_size, resize_weights

RAMP = np.arange(1, 9, dtype=np.float64)

# conventions.md §2a, computed there from a direct transcription of the spec
RAMP_UP2 = [0.90625, 1.179688, 1.726562, 2.25, 2.75, 3.25, 3.75, 4.25, 4.75, 5.25, 5.75, 6.25, 6.75,
            7.273438, 7.820312, 8.09375]
RAMP_DOWN2 = [1.449219, 3.488281, 5.511719, 7.550781]


def test_cubic_kernel_values():
    x = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, -0.5, -1.5])
    # 1.5|x|^3 - 2.5|x|^2 + 1 ; -0.5|x|^3 + 2.5|x|^2 - 4|x| + 2
    expected = [1.0, 0.5625, 0.0, -0.0625, 0.0, 0.0, 0.5625, -0.0625]
    np.testing.assert_allclose(cubic(x), expected, atol=1e-15)


def test_ramp_upscale_x2():
    out = imresize(RAMP[:, None], (2, 1))[:, 0]
    np.testing.assert_allclose(out, RAMP_UP2, atol=5e-7)
    # the interior is exactly linear: u = x/2 + 0.25
    np.testing.assert_allclose(out[3:13], np.arange(4, 14) / 2 + 0.25, atol=1e-12)


def test_ramp_downscale_x2_and_weights():
    out = imresize(RAMP[None, :], (1, 0.5))[0]
    np.testing.assert_allclose(out, RAMP_DOWN2, atol=5e-7)
    idx, w = resize_weights(8, 4, 0.5, True)
    # 10 taps per output, the all-zero first/last columns dropped: indices 2,1,0,0,1,2,3,4
    assert idx[0].tolist() == [2, 1, 0, 0, 1, 2, 3, 4]
    np.testing.assert_allclose(
        w[0], [-0.011719, -0.035156, 0.113281, 0.433594, 0.433594, 0.113281, -0.035156, -0.011719], atol=5e-7)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-15)


@pytest.mark.parametrize("scale", [0.25, 1 / 3, 0.5, 2, 3, 4, 0.7])
@pytest.mark.parametrize("dtype", [np.uint8, np.float64, np.float32])
def test_constant_image_stays_constant(scale, dtype):
    value = 173 if dtype == np.uint8 else 0.4217
    img = np.full((23, 17, 3), value, dtype=dtype)
    out = imresize(img, scale)
    assert out.shape == (output_size(23, scale), output_size(17, scale), 3)
    if dtype == np.uint8:
        assert out.dtype == np.uint8 and (out == value).all()
    else:
        assert out.dtype == np.float64
        np.testing.assert_allclose(out, value, atol=1e-12)


@pytest.mark.parametrize("s", [2, 3, 4])
def test_shapes_and_roundtrip(s):
    rng = np.random.default_rng(0)
    hr = modcrop(rng.integers(0, 256, (50, 37, 3), dtype=np.uint8), s)
    assert hr.shape[0] % s == 0 and hr.shape[1] % s == 0
    lr = imresize(hr, 1 / s)
    assert lr.shape == (hr.shape[0] // s, hr.shape[1] // s, 3) and lr.dtype == np.uint8
    assert imresize(lr, s).shape == hr.shape
    gray = imresize(hr[..., 0], 1 / s)
    assert gray.shape == lr.shape[:2]
    # a gray image resizes like each channel of a colour image
    np.testing.assert_array_equal(gray, lr[..., 0])


def test_output_size_is_robust_to_binary_fractions():
    assert output_size(255, 1 / 3) == 85
    assert output_size(256, 1 / 3) == 86  # ceil(85.33)
    assert output_size(7, 0.5) == 4
    assert imresize(np.zeros((255, 255), np.uint8), 1 / 3).shape == (85, 85)


def test_uint8_rounds_after_each_pass():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    out = imresize(img, 0.5)
    # per-pass rounding, written out with the public float path
    h = imresize(img.astype(np.float64), (0.5, 1))
    h = np.clip(np.floor(h + 0.5), 0, 255)
    expected = np.clip(np.floor(imresize(h, (1, 0.5)) + 0.5), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    # rounding once at the end differs somewhere (that is why MATLAB's order matters)
    once = np.clip(np.floor(imresize(img.astype(np.float64), 0.5) + 0.5), 0, 255).astype(np.uint8)
    assert (once != out).any()


def test_round_half_away_from_zero():
    # MATLAB rounds ties away from zero (numpy's round is half-to-even); no x + 0.5 drift near ties
    from lightsr.data.imresize import _round_clip

    x = np.array([0.5, 1.5, 2.5, 254.5, 255.5, -0.5, 3.4999999999999996, 0.49999999999999994])
    np.testing.assert_array_equal(_round_clip(x, 255.0), [1, 2, 3, 255, 255, 0, 3, 0])


def test_uint16_and_errors():
    img16 = np.full((8, 8), 60000, np.uint16)
    out = imresize(img16, 0.5)
    assert out.dtype == np.uint16 and (out == 60000).all()
    with pytest.raises(TypeError):
        imresize(np.zeros((4, 4), np.int32), 0.5)
    with pytest.raises(ValueError):
        imresize(np.zeros((4, 4, 3, 1), np.uint8), 0.5)
    with pytest.raises(ValueError):
        imresize(np.zeros((4, 4), np.uint8), 0)


def test_no_antialiasing_downscale_is_plain_cubic():
    idx, w = resize_weights(16, 8, 0.5, False)
    assert idx.shape[1] <= 6
    out = imresize(np.arange(16, dtype=np.float64)[:, None], (0.5, 1), antialiasing=False)
    assert out.shape == (8, 1)


def test_tensor_matches_numpy_and_is_differentiable():
    rng = np.random.default_rng(2)
    img = rng.random((2, 3, 21, 30))
    t = torch.from_numpy(img).requires_grad_(True)
    for scale in (0.25, 1 / 3, 2):
        out = imresize_tensor(t, scale)
        ref = np.stack([np.stack([imresize(c, scale) for c in b]) for b in img])
        np.testing.assert_allclose(out.detach().numpy(), ref, atol=1e-12)
    out.sum().backward()
    assert t.grad is not None and torch.isfinite(t.grad).all()
    chw = imresize_tensor(torch.rand(3, 12, 12), 0.5)
    assert chw.shape == (3, 6, 6) and chw.dtype == torch.float32
    with pytest.raises(TypeError):
        imresize_tensor(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), 0.5)


def test_modcrop_numpy_and_tensor():
    a = np.zeros((13, 10, 3))
    assert modcrop(a, 4).shape == (12, 8, 3)
    assert modcrop(a[..., 0], 3).shape == (12, 9)
    assert tuple(modcrop(torch.zeros(2, 3, 13, 10), 4).shape) == (2, 3, 12, 8)


def _bitexact(set_name: str) -> int:
    root = shared_path("datasets", "benchmark", set_name)
    n = 0
    for hr_path in sorted((root / "HR").glob("*.png")):
        hr = np.asarray(Image.open(hr_path))
        for s in (2, 3, 4):
            lr_path = root / "LR_bicubic" / f"X{s}" / f"{hr_path.stem}x{s}.png"
            ref = np.asarray(Image.open(lr_path))
            out = imresize(modcrop(hr, s), 1 / s)
            assert out.shape == ref.shape, lr_path.name
            diff = np.abs(out.astype(int) - ref.astype(int))
            assert diff.max() == 0, f"{lr_path.name}: {(diff > 0).sum()} values differ (max {diff.max()})"
            n += 1
    return n


def test_set5_lr_bicubic_bit_exact():
    assert _bitexact("Set5") == 15


def test_set14_lr_bicubic_bit_exact():
    assert _bitexact("Set14") == 42  # incl. the grayscale 'bridge'
