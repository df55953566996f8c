"""``lightsr train`` / ``prepare`` / ``plot-log`` command lines."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lightsr.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from train_helpers import make_images, tiny_config, write_config  # noqa: E402

def test_help_teaches(capsys):
    for cmd in ("train", "prepare", "plot-log"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "examples:" in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--resume auto" in capsys.readouterr().out


def test_config_errors_are_one_line_and_exit_2(tmp_path, capsys):
    cfg = write_config(tiny_config(tmp_path), tmp_path / "c.yaml")
    assert main(["train", str(cfg), "train.totl_iter=5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "train.totl_iter: unknown key; did you mean 'total_iter'?" in err
    assert main(["train", str(cfg), "datasets.train.dataroot_gt=" + str(tmp_path / "nope")]) == 1
    assert "no such folder" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2


def test_check_prints_resolved_config(tmp_path, capsys):
    cfg = write_config(tiny_config(tmp_path), tmp_path / "c.yaml")
    assert main(["train", str(cfg), "--check", "datasets.train.batch_size=2", "network_g.blocks=2"]) == 0
    out = capsys.readouterr().out
    resolved = yaml.safe_load(out.split("# train:")[0])
    assert resolved["datasets"]["train"]["batch_size"] == 2 and resolved["network_g"]["blocks"] == 2
    assert "# train: 6 images usable, LR patch 8, effective batch 2" in out and "# config OK" in out
    assert not (tmp_path / "runs").exists()  # --check trains nothing, writes nothing


def test_prepare_cuts_aligned_subimages(tmp_path, capsys):
    from lightsr.data.imresize import imresize

    hr_dir = tmp_path / "DIV2K_train_HR"
    make_images(hr_dir, 2, (100, 75), 0)
    assert main(["prepare", str(hr_dir), "--crop", "48", "--step", "24", "--scales", "2", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    sub = tmp_path / "DIV2K_train_HR_sub"
    lr2 = tmp_path / "DIV2K_train_LR_bicubic" / "X2_sub"
    lr3 = tmp_path / "DIV2K_train_LR_bicubic" / "X3_sub"
    # 100x75 cropped to 96x72 (multiple of 6): rows 0,24,48 ; cols 0,24 -> 6 sub-images per image
    names = sorted(p.name for p in sub.iterdir())
    assert len(names) == 12 and names[0] == "im00_s001.png"
    assert sorted(p.name for p in lr2.iterdir()) == names == sorted(p.name for p in lr3.iterdir())
    assert "12 sub-images written" in out
    full = np.asarray(Image.open(hr_dir / "im00.png").convert("RGB"))[:96, :72]
    lr_full = imresize(full, 1 / 3)
    s6 = np.asarray(Image.open(sub / "im00_s006.png"))  # row 48, col 24
    np.testing.assert_array_equal(s6, full[48:96, 24:72])
    np.testing.assert_array_equal(np.asarray(Image.open(lr3 / "im00_s006.png")), lr_full[16:32, 8:24])
    # running again skips everything; the input folder is untouched
    assert main(["prepare", str(hr_dir), "--crop", "48", "--step", "24", "--scales", "2", "3", "--quiet"]) == 0
    assert "0 sub-images written, 12 already there" in capsys.readouterr().out
    assert sorted(p.name for p in hr_dir.iterdir()) == ["im00.png", "im01.png"]


def test_prepare_reports_bad_images_and_continues(tmp_path, capsys):
    hr_dir = make_images(tmp_path / "hr", 1, (60, 60), 0)
    (hr_dir / "broken.png").write_bytes(b"\x89PNG not really")
    assert main(["prepare", str(hr_dir), "-o", str(tmp_path / "out"), "--crop", "24", "--step", "24",
                 "--scales", "4", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "broken.png" in captured.out + captured.err and "1 images failed" in captured.out
    assert len(list((tmp_path / "out" / "hr_sub").iterdir())) == 9  # rows/cols 0, 24, 36
    assert main(["prepare", str(hr_dir), "--crop", "25", "--scales", "2", "--quiet"]) == 2
    assert "multiples of every scale" in capsys.readouterr().err


def test_plot_log(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_log.csv").write_text("iter,loss\n" + "".join(f"{i},{1 / i}\n" for i in range(1, 50)))
    (run / "val_log.csv").write_text("iter,dataset,psnr,ssim,best\n10,Set5,30.1,0.9,1\n20,Set5,31.2,0.91,1\n")
    out = tmp_path / "fig" / "curve.png"
    assert main(["plot-log", str(run), "-o", str(out), "--log-y", "--ref", "30.5:bicubic"]) == 0
    with Image.open(out) as im:
        assert im.size[0] > 600 and im.size[1] > 300
    assert main(["plot-log", str(tmp_path / "nothing"), "-o", str(out)]) == 2
    assert main(["plot-log", str(run), "-o", str(out), "--ref", "high"]) == 2
    assert "--ref 'high': expected VALUE[:LABEL]" in capsys.readouterr().err
    svg = tmp_path / "fig" / "curve.svg"  # the format follows the suffix; nothing partial is left beside it
    assert main(["plot-log", str(run), "-o", str(svg), "--smooth", "0"]) == 0
    assert b"<svg" in svg.read_bytes()[:2000]
    assert sorted(p.name for p in svg.parent.iterdir()) == ["curve.png", "curve.svg"]
