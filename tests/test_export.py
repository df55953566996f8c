"""ONNX export: dynamic sizes, onnxruntime agreement, TLC handling, atomic output, CLI."""
from __future__ import annotations

import pytest
import torch

import lightsr
from lightsr.cli import main

pytest.importorskip("onnx", reason="ONNX export needs the optional extra: pip install 'lightsr[onnx]'")
pytest.importorskip("onnxruntime", reason="verification needs onnxruntime: pip install 'lightsr[onnx]'")

from lightsr.export import ExportError, export_onnx  # noqa: E402

SIZES = ((24, 32), (37, 19))

# reduced builds of the real architectures (same operators, fewer blocks): seconds to export
SMALL = {
    "lamnet": dict(num_groups=1, num_blocks=1),
    "dlgsanet_light": dict(groups=1, blocks=1),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_builds_export_and_match(tmp_path, name):
    model = lightsr.create_model(name, 4, **SMALL[name]).eval()
    report = export_onnx(model, tmp_path / f"{name}.onnx", sizes=SIZES)
    assert report.verified and (tmp_path / f"{name}.onnx").is_file()
    assert set(report.max_abs_diff) == {"24x32", "37x19"}
    assert max(report.max_abs_diff.values()) <= 1e-4
    if name.startswith("dlgsanet"):
        assert any("TLC" in n for n in report.notes)
    assert [p.name for p in tmp_path.iterdir()] == [f"{name}.onnx"]  # no temporary left


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lamnet", "dlgsanet_light"])
def test_full_models_x4_export_and_match(tmp_path, name):
    model = lightsr.create_model(name, 4).eval()
    report = export_onnx(model, tmp_path / f"{name}_x4.onnx", sizes=SIZES)
    assert report.verified and max(report.max_abs_diff.values()) <= 1e-4, report.max_abs_diff


def test_mismatch_is_refused_and_nothing_written(tmp_path, monkeypatch):
    model = lightsr.create_model("lamnet", 2, num_groups=1, num_blocks=1).eval()
    import lightsr.export as ex

    monkeypatch.setattr(ex, "verify_onnx", lambda *a, **k: {"24x32": 0.5})
    with pytest.raises(ExportError, match="differs"):
        export_onnx(model, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_existing_file_kept_without_overwrite(tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"keep")
    model = lightsr.create_model("lamnet", 2, num_groups=1, num_blocks=1).eval()
    with pytest.raises(ExportError, match="exists"):
        export_onnx(model, target)
    assert target.read_bytes() == b"keep"


def test_cli_export(tmp_path, capsys):
    torch.manual_seed(0)
    weights = lightsr.save_model(lightsr.create_model("dlgsanet_light", 4, groups=1, blocks=1), tmp_path / "w.safetensors")
    out = tmp_path / "w.onnx"
    assert main(["export", "--weights", str(weights), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "verified with onnxruntime" in text and "TLC switched off" in text
    assert main(["export", "--weights", str(weights), "--scale", "2", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "x4" in capsys.readouterr().err
    assert main(["export", "--model", "lamnet_large", "--scale", "4", "-o", str(tmp_path / "y.onnx")]) == 2
    assert "--weights" in capsys.readouterr().err
