"""lightsr.evaluate: the per-image pipeline, conventions, ensemble/tiling helpers, failures, outputs."""
from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import lightsr
from conftest import shared_path
from lightsr.data.benchmark import BenchmarkSet, find_benchmark
from lightsr.data.imresize import imresize, modcrop
from lightsr.evaluation import (CONVENTIONS, Bicubic, Convention, evaluate, forward_self_ensemble,
                                forward_tiled)
from lightsr.metrics import psnr, ssim, to_uint8


class Nearest(nn.Module):
    """Pixel-replication upscaler: equivariant to flips / rotations, receptive field of one pixel."""

    def __init__(self, scale: int):
        super().__init__()
        self.scale = scale
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return F.interpolate(x, scale_factor=self.scale, mode="nearest") * self.w


def _make_set(tmp_path, scale=2, n=3, gray_index=None, size=(30, 26)):
    rng = np.random.default_rng(1)
    hr_dir = tmp_path / "Synth" / "HR"
    hr_dir.mkdir(parents=True)
    for i in range(n):
        shape = size if i == gray_index else size + (3,)
        base = rng.integers(0, 256, (4, 4) + shape[2:], dtype=np.uint8).astype(np.float64)
        img = np.clip(imresize(base, (size[0] / 4, size[1] / 4)) + rng.normal(0, 6, shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(hr_dir / f"im{i}.png")
    return BenchmarkSet(hr_dir, scale, name="Synth", cache_dir=tmp_path / "cache")


def test_model_pipeline_matches_manual_computation(tmp_path):
    ds = _make_set(tmp_path)
    model = Nearest(2)
    res = evaluate(model, ds, progress=False)
    assert res.scale == 2 and res.label == "Nearest" and len(res.sets[0].images) == 3
    manual = []
    for s in ds:
        x = torch.from_numpy(s.lr.transpose(2, 0, 1).copy())[None].float() / 255
        sr = to_uint8(model(x)[0])
        manual.append((psnr(sr, s.hr, 2), ssim(sr, s.hr, 2)))
    np.testing.assert_allclose([(r.psnr, r.ssim) for r in res.sets[0].images], manual, rtol=0, atol=1e-12)
    assert res.sets[0].psnr == pytest.approx(np.mean([m[0] for m in manual]))
    # crop and RGB overrides reach the metric
    res4 = evaluate(model, ds, progress=False, crop_border=4, y_channel=False)
    s0 = ds[0]
    sr0 = to_uint8(model(torch.from_numpy(s0.lr.transpose(2, 0, 1).copy())[None].float() / 255)[0])
    assert res4.sets[0].images[0].psnr == pytest.approx(psnr(sr0, s0.hr, 4, y_channel=False), abs=1e-12)


def test_bicubic_variants(tmp_path):
    ds = _make_set(tmp_path, scale=2)
    s = ds[0]
    r = evaluate("bicubic", ds, scale=2, progress=False)
    assert r.label == "Bicubic"
    assert r.sets[0].images[0].psnr == pytest.approx(psnr(imresize(s.lr, 2), s.hr, 2), abs=1e-12)
    rf = evaluate("bicubic", ds, scale=2, progress=False, bicubic_output="float")
    sr_f = imresize(s.lr.astype(np.float64), 2)
    assert rf.sets[0].images[0].psnr == pytest.approx(psnr(sr_f, s.hr.astype(np.float64), 2), abs=1e-12)
    # the Y-channel (SRCNN/VDSR) protocol of the matlab-y preset
    ry = evaluate("bicubic", ds, scale=2, progress=False, convention="matlab-y")
    from lightsr.metrics import rgb_to_y

    y = rgb_to_y(s.hr, round_y=True)
    sr_y = imresize(imresize(y.astype(np.uint8), 0.5).astype(np.float64), 2)
    assert ry.sets[0].images[0].psnr == pytest.approx(psnr(sr_y, y, 2, y_channel=False), abs=1e-12)
    with pytest.raises(ValueError, match="self-ensemble"):
        evaluate("bicubic", ds, scale=2, self_ensemble=True, progress=False)
    # Bicubic as a plain module: float upscaling of a batch
    t = torch.rand(2, 3, 8, 10)
    assert Bicubic(3)(t).shape == (2, 3, 24, 30)


def test_gray_conventions(tmp_path):
    ds = _make_set(tmp_path, gray_index=0, n=1)
    assert ds[0].gray
    as_rgb = evaluate("bicubic", ds, scale=2, progress=False, gray="rgb").sets[0].psnr
    as_y = evaluate("bicubic", ds, scale=2, progress=False, gray="y").sets[0].psnr
    assert as_rgb - as_y == pytest.approx(20 * math.log10(255 / 219), abs=1e-9)
    # a model sees the gray image as R = G = B
    seen = []

    class Spy(Nearest):
        def forward(self, x):
            seen.append(x)
            return super().forward(x)

    r = evaluate(Spy(2), ds, progress=False, gray="y")
    assert seen[0].shape[1] == 3 and torch.equal(seen[0][:, 0], seen[0][:, 2])
    assert r.sets[0].images[0].gray


def test_conventions_and_overrides():
    assert set(CONVENTIONS) == {"basicsr", "matlab-y", "ntire"}
    assert CONVENTIONS["ntire"].border(2) == 4 and not CONVENTIONS["ntire"].y_channel
    assert CONVENTIONS["basicsr"].border(3) == 3
    with pytest.raises(ValueError):
        Convention(gray="luma")
    with pytest.raises(ValueError):
        Convention(bicubic_channel="y", y_channel=False)
    with pytest.raises(ValueError, match="unknown convention"):
        evaluate("bicubic", [], scale=2, convention="nope")


def test_self_ensemble_and_tiling_helpers():
    x = torch.rand(1, 3, 13, 17)
    model = Nearest(3)
    ref = model(x)
    torch.testing.assert_close(forward_self_ensemble(model, x), ref)
    torch.testing.assert_close(forward_tiled(model, x, 3, tile=5, overlap=2), ref)
    torch.testing.assert_close(forward_tiled(model, x, 3, tile=64), ref)
    # a model that is not flip-invariant changes under the ensemble (it averages 8 views)
    conv = nn.Conv2d(3, 3, 3, padding=1)
    up = lambda t: F.interpolate(conv(t), scale_factor=2)  # noqa: E731
    assert not torch.allclose(forward_self_ensemble(up, x), up(x))


def test_ensemble_and_tile_options_in_evaluate(tmp_path):
    ds = _make_set(tmp_path)
    model = Nearest(2)
    base = evaluate(model, ds, progress=False).sets[0].psnr
    assert evaluate(model, ds, progress=False, self_ensemble=True).sets[0].psnr == pytest.approx(base, abs=1e-9)
    assert evaluate(model, ds, progress=False, tile=8, tile_overlap=2).sets[0].psnr == pytest.approx(base, abs=1e-9)


def test_failures_are_recorded_and_the_rest_evaluated(tmp_path):
    ds = _make_set(tmp_path)

    class Flaky(Nearest):
        calls = 0

        def forward(self, x):
            Flaky.calls += 1
            if Flaky.calls == 2:
                raise RuntimeError("out of memory\nlong trace")
            return super().forward(x)

    res = evaluate(Flaky(2), ds, progress=False)
    assert len(res.sets[0].images) == 2
    assert res.failures == [("Synth", "im1", "out of memory")]
    assert "(1 failed)" in res.to_markdown()

    class Small(Nearest):
        def forward(self, x):
            return super().forward(x)[..., :-2, :]

    res = evaluate(Small(2), ds, progress=False)
    assert len(res.failures) == 3 and "smaller than the HR" in res.failures[0][2]


def test_outputs_and_saved_images(tmp_path):
    ds = _make_set(tmp_path)
    res = evaluate(Nearest(2), ds, progress=False, save_dir=tmp_path / "sr", label="NN")
    md = res.to_markdown()
    assert "| NN | x2 |" in md and "basicsr convention" in md
    rows = list(csv.DictReader(io.StringIO(res.to_csv())))
    assert [r["image"] for r in rows] == ["im0", "im1", "im2"]
    assert float(rows[0]["psnr"]) == pytest.approx(res.sets[0].images[0].psnr, abs=1e-6)
    data = json.loads(res.to_json())
    assert data["sets"]["Synth"]["images"] == 3 and data["convention"]["crop_border_used"] == 2
    paths = res.write(tmp_path / "out")
    assert all(p.is_file() for p in paths.values())
    saved = np.asarray(Image.open(tmp_path / "sr" / "Synth" / "im0.png"))
    s0 = ds[0]
    x = torch.from_numpy(s0.lr.transpose(2, 0, 1).copy())[None].float() / 255
    np.testing.assert_array_equal(saved, to_uint8(Nearest(2)(x)[0]))  # the scored image is the saved one
    assert psnr(saved, s0.hr, 2) == pytest.approx(res.sets[0].images[0].psnr, abs=1e-12)


def test_scale_checks(tmp_path):
    ds = _make_set(tmp_path, scale=2)
    with pytest.raises(ValueError, match="prepared for x2"):
        evaluate(Nearest(3), ds, progress=False)
    with pytest.raises(ValueError, match="scale="):
        evaluate("bicubic", ds, progress=False)
    with pytest.raises(ValueError, match="TLC"):
        evaluate(Nearest(2), ds, progress=False, tlc=False)
    with pytest.raises(ValueError, match="DLGSANet"):
        evaluate(Nearest(2), ds, progress=False, attention_stats=True)


def test_attention_stats_and_tlc_with_dlgsanet(tmp_path):
    ds = _make_set(tmp_path, scale=4, n=1, size=(32, 32))
    model = lightsr.create_model("dlgsanet_tiny", 4, groups=1, blocks=1)  # mechanism only, tiny random net
    res = evaluate(model, ds, progress=False, attention_stats=True, tlc=False)
    sp = res.sets[0].sparsity
    assert sp is not None and 0.0 < sp <= 1.0
    assert "SparseGSA positive share" in res.to_markdown()
    assert all(not m.tlc for m in model.attention_layers())


def test_lightsr_evaluate_is_exported():
    assert lightsr.evaluate is evaluate


def test_set5_bicubic_reproduces_published_rows():
    root = shared_path("datasets", "benchmark")
    published = {2: (33.66, 0.9299), 3: (30.39, 0.8682), 4: (28.42, 0.8104)}
    for s, (p, q) in published.items():
        r = evaluate("bicubic", find_benchmark(root, "Set5", s), scale=s, convention="matlab-y", progress=False)
        assert abs(r.sets[0].psnr - p) <= 0.01 and abs(r.sets[0].ssim - q) <= 0.001, (s, r.sets[0].psnr, r.sets[0].ssim)


# -- issue 22 -------------------------------------------------------------------------------------------
def test_non_finite_outputs_are_failures_not_scores(tmp_path):
    """Item 2: NaN outputs were scored (5.51 dB with a numpy warning); now each is a failure."""
    ds = _make_set(tmp_path)

    class Broken(Nearest):
        def forward(self, x):
            y = super().forward(x).clone()
            y[..., 1, 1] = float("nan")
            return y

    res = evaluate(Broken(2), ds, progress=False)
    assert res.sets[0].images == [] and len(res.failures) == 3
    assert all("NaN/Inf" in msg for _, _, msg in res.failures)
    assert "failed" in res.to_markdown()


def test_subsets_are_labelled(tmp_path):
    """Item 11: the tables say when a set is a subset of the standard one (e.g. Urban100: 25 of 100)."""
    ds = _make_set(tmp_path, n=3)
    res = evaluate(Nearest(2), ds, progress=False)
    assert "| Synth |" in res.to_markdown()  # not a standard set: no claim
    for name, full in (("Urban100", 100), ("Manga109", 109)):
        sub = BenchmarkSet(ds.hr_dir, 2, name=name, cache_dir=tmp_path / "cache")
        md = evaluate(Nearest(2), sub, progress=False).to_markdown()
        assert f"| {name} (3 of {full}) |" in md and f"{name} = 3 of its {full} images" in md
    r = evaluate(Nearest(2), BenchmarkSet(ds.hr_dir, 2, name="Set5", cache_dir=tmp_path / "cache"), progress=False,
                 limit=2)
    assert json.loads(r.to_json())["sets"]["Set5"]["complete_set_images"] == 5
    assert "| Set5 (2 of 5) |" in r.to_markdown()
