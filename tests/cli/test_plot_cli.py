"""``lightsr plot``: eval results + paper rows -> PSNR/MACs bubble chart."""
from __future__ import annotations

import json

import pytest

from lightsr.cli import main
from lightsr.cli.plot import fill_complexity, load_points


def _eval_json(path, model, psnr, scale=4):
    path.write_text(json.dumps({"model": model, "scale": scale, "convention": {"name": "basicsr"},
                                "sets": {"Set5": {"psnr": psnr, "ssim": 0.9}, "B100": {"psnr": psnr - 4, "ssim": 0.7}}}))
    return path


def test_load_points_from_eval_results_and_rows(tmp_path):
    a = _eval_json(tmp_path / "imdn.json", "imdn", 32.2)
    b = _eval_json(tmp_path / "bic.json", "Bicubic", 28.4)
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps({"rows": [
        {"model": "lamnet", "label": "LAMNet", "scale": 4, "set": "Set5", "psnr": 32.51, "source": "paper-reported: T3"},
        {"model": "lamnet", "scale": 2, "set": "Set5", "psnr": 38.0},  # other scale: ignored
        {"model": "custom", "scale": 4, "set": "Set5", "psnr": 31.0, "params": 1000, "gmacs": 3.0},
        {"model": "broken", "scale": 4, "set": "Set5"},  # no psnr
    ]}))
    points, problems = load_points([a, b, rows], "Set5", 4)
    assert [(p.model, p.measured) for p in points] == [("imdn", True), ("Bicubic", True), ("lamnet", False), ("custom", True)]
    assert len(problems) == 1 and "row 3" in problems[0]
    assert fill_complexity(points) == []
    lam = points[2]
    assert lam.params == 849_136 and lam.gmacs == pytest.approx(48.67, abs=0.01)
    assert points[3].gmacs == 3.0


def test_plot_writes_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a = _eval_json(tmp_path / "imdn.json", "imdn", 32.2)
    b = _eval_json(tmp_path / "bic.json", "Bicubic", 28.4)
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"model": "dlgsanet_light", "scale": 4, "set": "Set5", "psnr": 32.54,
                                 "source": "paper-reported: LAMNet Table 3"}]))
    out = tmp_path / "fig" / "psnr.png"
    assert main(["plot", str(a), str(b), str(rows), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "[measured]" in text and "[paper-reported: LAMNet Table 3]" in text
    assert main(["plot", str(a), "-o", str(out)]) == 2  # exists, no --overwrite
    assert main(["plot", str(tmp_path / "missing.json"), "-o", str(tmp_path / "x.png")]) == 2  # nothing to plot
