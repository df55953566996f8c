"""`lightsr upscale --demo`: the bundled sample, upscaled, and the side-by-side figure."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import lightsr
from lightsr import pretrained
from lightsr.cli import main
from lightsr.inference.demo import SAMPLE


def test_sample_is_bundled_with_its_license():
    assert SAMPLE.is_file()
    assert Image.open(SAMPLE).size == (226, 150)
    license_text = (SAMPLE.parent / "LICENSE.md").read_text()
    assert "CC0" in license_text and SAMPLE.name in license_text


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """Pretend a small model ships as the default x2 weights (fast; the real default is tested below)."""
    import torch

    torch.manual_seed(0)
    model = lightsr.create_model("lamnet", 2, num_groups=1, num_blocks=1, dim=16)
    folder = tmp_path / "pretrained"
    folder.mkdir()
    lightsr.save_model(model, folder / "lamnet_x2.safetensors")
    monkeypatch.setattr(pretrained, "HERE", folder)
    monkeypatch.setattr(pretrained, "DEFAULT_MODEL", "lamnet")
    return folder


def test_demo_writes_result_and_figure(tmp_path, shipped, capsys):
    out = tmp_path / "demo"
    assert main(["upscale", "--demo", "--scale", "2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    result, figure = out / "chelsea_x2.png", out / "chelsea_x2_compare.png"
    assert str(result) in printed and str(figure) in printed
    assert Image.open(result).size == (452, 300)
    fig = np.asarray(Image.open(figure).convert("RGB"))
    assert fig.shape[1] > 3 * 240 and fig.std() > 10  # three zoomed tiles and an overview, not blank
    assert sorted(p.name for p in out.iterdir()) == ["chelsea_x2.png", "chelsea_x2_compare.png"]  # no temp files


def test_demo_default_output_folder(tmp_path, shipped, capsys, monkeypatch):
    """The README's first command: `lightsr upscale --demo` with no -o writes to ./lightsr-demo."""
    monkeypatch.chdir(tmp_path)
    assert main(["upscale", "--demo", "--scale", "2"]) == 0
    assert (tmp_path / "lightsr-demo" / "chelsea_x2.png").is_file()
    assert "lightsr-demo" in capsys.readouterr().out


def test_demo_usage_errors(tmp_path, shipped, capsys):
    assert main(["upscale", "--demo", "x.png", "-o", str(tmp_path)]) == 2
    assert "--demo takes no INPUT" in capsys.readouterr().err
    assert main(["upscale", "--demo", "--scale", "3", "-o", str(tmp_path / "d")]) == 2  # nothing ships for x3
    assert "no pretrained weights ship for lamnet x3" in capsys.readouterr().err
    assert main(["upscale", "-o", str(tmp_path)]) == 2
    assert "give INPUT" in capsys.readouterr().err


@pytest.mark.skipif(pretrained.default_weights(pretrained.DEFAULT_MODEL, 4) is None,
                    reason="no default x4 weights are shipped in this checkout")
def test_demo_with_the_shipped_default(tmp_path):
    out = tmp_path / "demo"
    assert main(["upscale", "--demo", "-o", str(out)]) == 0
    sr = np.asarray(Image.open(out / "chelsea_x4.png").convert("RGB")).astype(np.float64)
    assert sr.shape == (600, 904, 3)
    # the trained model is close to bicubic in the large (a sanity check of the weights), sharper in detail
    from lightsr.data.imresize import imresize

    bic = imresize(np.asarray(Image.open(SAMPLE).convert("RGB")), 4.0).astype(np.float64)
    assert np.abs(sr - bic).mean() < 8


def test_demo_passes_tiling_precision_and_weights_on(tmp_path, shipped, capsys):
    """--demo honours the upscaling options (tile, overlap, precision, --weights) like any other input."""
    whole, tiled = tmp_path / "whole", tmp_path / "tiled"
    assert main(["upscale", "--demo", "--scale", "2", "--tile", "0", "-o", str(whole)]) == 0
    assert main(["upscale", "--demo", "--scale", "2", "--tile", "48", "--tile-overlap", "0", "-o", str(tiled)]) == 0
    a = np.asarray(Image.open(whole / "chelsea_x2.png")).astype(int)
    b = np.asarray(Image.open(tiled / "chelsea_x2.png")).astype(int)
    assert a.shape == b.shape and np.abs(a - b).max() > 0  # no overlap: seams show, so it was tiled
    assert np.abs(a - b).mean() < 1

    # the scale of --weights (here x2) is used when --scale is not given
    weights = shipped / "lamnet_x2.safetensors"
    out = tmp_path / "w"
    assert main(["upscale", "--demo", "--model", "lamnet", "--weights", str(weights), "-o", str(out)]) == 0
    assert (out / "chelsea_x2.png").is_file() and "chelsea_x2.png" in capsys.readouterr().out

    assert main(["upscale", "--demo", "--tile", "8", "-o", str(tmp_path / "bad")]) == 2
    assert "--tile must be" in capsys.readouterr().err
    bf16 = tmp_path / "bf16"
    assert main(["upscale", "--demo", "--scale", "2", "--tile", "0", "--precision", "bf16", "-o", str(bf16)]) == 0
    c = np.asarray(Image.open(bf16 / "chelsea_x2.png")).astype(int)
    assert 0 < np.abs(a - c).max() and np.abs(a - c).mean() < 2  # bf16 autocast ran: close, not identical
