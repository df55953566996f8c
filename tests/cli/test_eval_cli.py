"""`lightsr eval`: argument handling, outputs, exit codes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import lightsr
from conftest import shared_path
from lightsr.cli import main


def _data(tmp_path, n=2):
    rng = np.random.default_rng(3)
    hr = tmp_path / "data" / "Set5" / "HR"
    hr.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (24, 28, 3), dtype=np.uint8)).save(hr / f"x{i}.png")
    return tmp_path / "data"


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--convention" in out and "--attention-stats" in out


def test_bicubic_writes_table_csv_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LIGHTSR_CACHE", str(tmp_path / "cache"))
    data = _data(tmp_path)
    out = tmp_path / "out"
    rc = main(["eval", "--model", "bicubic", "--scale", "2", "--data", str(data), "-o", str(out), "--quiet",
               "--save-images"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| Bicubic | x2 |" in printed and "Set5" in printed
    table = (out / "results.md").read_text()
    assert table.startswith("| Method | Scale | Set5 (2 of 5) |")  # 2 of the 5 Set5 images: a subset, said so
    assert "Subsets, not the complete sets: Set5 = 2 of its 5 images." in table
    assert len((out / "per_image.csv").read_text().splitlines()) == 3
    meta = json.loads((out / "results.json").read_text())
    assert meta["sets"]["Set5"]["images"] == 2 and meta["convention"]["name"] == "basicsr"
    assert len(list((out / "sr" / "Set5").glob("*.png"))) == 2


def test_default_output_folder_is_model_x_scale(tmp_path, capsys, monkeypatch):
    # docs/complexity.md's plot commands read results/eval/bicubic_x4/results.json
    monkeypatch.setenv("LIGHTSR_CACHE", str(tmp_path / "cache"))
    data = _data(tmp_path, n=1)
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--model", "bicubic", "--scale", "2", "--data", str(data), "--quiet"]) == 0
    assert (tmp_path / "results" / "eval" / "bicubic_x2" / "results.json").is_file()
    assert "| Bicubic | x2 |" in capsys.readouterr().out  # the table keeps its label


def test_weights_file_model_detected(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LIGHTSR_CACHE", str(tmp_path / "cache"))
    data = _data(tmp_path, n=1)
    w = lightsr.save_model(lightsr.create_model("imdn", 2, num_blocks=1), tmp_path / "tiny_imdn.safetensors")
    rc = main(["eval", "--weights", str(w), "--data", str(data), "-o", str(tmp_path / "o"), "--quiet",
               "--round-y", "yes", "--crop-border", "4", "--gray", "y"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| imdn | x2 |" in out and "basicsr (modified)" in out and "border 4" in out and "rounded" in out


@pytest.mark.parametrize("argv, message", [
    (["--model", "dlgsanet_light", "--scale", "4"], "no pretrained weights are shipped"),
    (["--model", "nosuch", "--scale", "4"], "unknown model"),
    (["--model", "bicubic"], "--scale is required"),
    (["--model", "imdn", "--scale", "2", "--weights", "missing.pth"], "weights file not found"),
])
def test_clear_one_line_errors(tmp_path, capsys, argv, message):
    data = _data(tmp_path, n=1)
    rc = main(["eval", *argv, "--data", str(data), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_missing_set_gives_nonzero_exit_but_evaluates_others(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LIGHTSR_CACHE", str(tmp_path / "cache"))
    data = _data(tmp_path, n=1)
    rc = main(["eval", "--model", "bicubic", "--scale", "2", "--data", str(data), "--sets", "Set5", "Urban100",
               "-o", str(tmp_path / "o"), "--quiet"])
    assert rc == 1
    captured = capsys.readouterr()
    assert "Urban100" in captured.err and "| Bicubic | x2 |" in captured.out


def test_bicubic_set5_matlab_y_on_shared(tmp_path, capsys):
    root = shared_path("datasets", "benchmark")
    rc = main(["eval", "--model", "bicubic", "--scale", "4", "--data", str(root), "--sets", "Set5",
               "--convention", "matlab-y", "-o", str(tmp_path / "o"), "--quiet"])
    assert rc == 0
    assert "| Bicubic | x4 | 28.42/0.8107 |" in capsys.readouterr().out


# ---- lightsr compare ------------------------------------------------------------------------
def test_pick_box_finds_the_damaged_region():
    from lightsr.cli.compare import pick_box

    hr = np.zeros((64, 80, 3), np.uint8)
    ref = hr.copy()
    ref[40:56, 8:24] = 200  # the only error
    left, top, w, h = pick_box(hr, ref, 16, stride=4)
    assert (w, h) == (16, 16) and abs(left - 8) <= 4 and abs(top - 40) <= 4


def test_compare_writes_a_figure(tmp_path, capsys):
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (64, 72, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "hr.png")
    w = lightsr.save_model(lightsr.create_model("pan", 2, num_blocks=1), tmp_path / "pan_x2.safetensors")
    out = tmp_path / "fig.png"
    rc = main(["compare", str(tmp_path / "hr.png"), "--scale", "2", "--model", "bicubic", "--model", str(w),
               "--labels", "Bicubic", "Tiny PAN", "--tile-size", "96", "-o", str(out)])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    fig = Image.open(out)
    assert fig.mode == "RGB" and fig.width > 3 * 96 and fig.height > 96
    rc = main(["compare", str(tmp_path / "hr.png"), "--scale", "2", "--model", "bicubic", "--box", "60", "0", "20",
               "20", "-o", str(out)])
    assert rc == 2 and "outside" in capsys.readouterr().err
    rc = main(["compare", str(tmp_path / "hr.png"), "--scale", "2", "--model", "dlgsanet", "-o", str(out)])
    assert rc == 2 and "no pretrained weights" in capsys.readouterr().err


def test_broken_weights_never_replace_earlier_results(tmp_path, capsys):
    """Item 2: NaN weights exit 2 at load; weights that overflow fail every image (exit 1); in both
    cases the results.md of an earlier complete run stays as it was."""
    import torch
    from safetensors.torch import save_file

    from lightsr.weights import read_checkpoint

    data = _data(tmp_path, n=1)
    out = tmp_path / "o"
    torch.manual_seed(0)
    good = lightsr.save_model(lightsr.create_model("imdn", 2, num_blocks=1), tmp_path / "good.safetensors")
    assert main(["eval", "--weights", str(good), "--data", str(data), "-o", str(out), "--quiet"]) == 0
    before = (out / "results.md").read_text()
    sd, meta = read_checkpoint(good)
    nan = {k: v.clone() for k, v in sd.items()}
    nan["fea_conv.weight"].view(-1)[0] = float("nan")
    save_file(nan, tmp_path / "nan.safetensors", metadata=meta)
    capsys.readouterr()
    assert main(["eval", "--weights", str(tmp_path / "nan.safetensors"), "--data", str(data), "-o", str(out),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tensor 'fea_conv.weight' holds 1 NaN/Inf value" in err[0]
    big = {k: v * 1e6 if v.is_floating_point() else v for k, v in sd.items()}
    save_file(big, tmp_path / "big.safetensors", metadata=meta)
    assert main(["eval", "--weights", str(tmp_path / "big.safetensors"), "--data", str(data), "-o", str(out),
                 "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "NaN/Inf" in captured.err and "no result file was written" in captured.err and "Traceback" not in captured.err
    assert (out / "results.md").read_text() == before


def test_compare_reports_progress_without_a_terminal(tmp_path, capsys, monkeypatch):
    """Issue 22 item 9: compare printed nothing until it had finished."""
    monkeypatch.setenv("LIGHTSR_PROGRESS_INTERVAL", "0")
    Image.fromarray(np.random.default_rng(6).integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(tmp_path / "hr.png")
    w = lightsr.save_model(lightsr.create_model("pan", 2, num_blocks=1), tmp_path / "pan_x2.safetensors")
    argv = ["compare", str(tmp_path / "hr.png"), "--scale", "2", "--model", "bicubic", "--model", str(w),
            "-o", str(tmp_path / "fig.png")]
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("compare: models: ")]
    assert lines and "2/2 (100%)" in lines[-1] and "elapsed" in lines[-1] and "ETA" in lines[-1]
    assert main([*argv, "--quiet"]) == 0
    assert "compare: models" not in capsys.readouterr().err
