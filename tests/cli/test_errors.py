"""The one error path of the CLI (issue 22): one line, documented exit codes, tracebacks only with --debug."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import lightsr
from lightsr.cli import main
from lightsr.cli.errors import one_line


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(path)
    return path


def _err_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("model, hint", [
    ("LGUN", "did you mean 'lgun'?"),
    ("dlgsanet-tiny", "did you mean 'dlgsanet_tiny'?"),
    ("Dlgsanet_Tiny", "did you mean 'dlgsanet_tiny'?"),
    ("foo", "available: "),
])
def test_model_name_typos_are_named_as_such(image, tmp_path, capsys, model, hint):
    """Issue 22 item 8: a typo is 'unknown model', never 'no pretrained weights ship'."""
    assert main(["upscale", str(image), "-o", str(tmp_path / "o"), "--model", model]) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and f"unknown model {model!r}" in err[0] and hint in err[0]
    assert "pretrained" not in err[0] and not (tmp_path / "o").exists()


def test_model_typo_with_weights_is_reported_before_loading(image, tmp_path, capsys):
    w = lightsr.save_model(lightsr.create_model("lamnet", 2, num_groups=1, num_blocks=1, dim=16), tmp_path / "w.safetensors")
    assert main(["upscale", str(image), "-o", str(tmp_path / "o"), "--model", "LAMNet", "--weights", str(w)]) == 2
    assert "did you mean 'lamnet'?" in _err_lines(capsys)[0]


def test_models_options_of_unknown_model(capsys):
    assert main(["models", "--options", "foo"]) == 2
    err = _err_lines(capsys)
    assert err == [err[0]] and err[0].startswith("lightsr models: error: unknown model 'foo'")
    assert main(["models", "--options", "lamnet"]) == 0


def test_debug_shows_the_traceback_and_only_then(image, tmp_path, capsys):
    bad = tmp_path / "notes.pth"
    bad.write_text("not weights\n")
    argv = ["upscale", str(image), "-o", str(tmp_path / "o"), "--weights", str(bad)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and "it is a text file" in err
    assert main(["--debug", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().endswith("(expected a lightsr .safetensors "
                                                                               "file or a PyTorch .pth checkpoint)")
    assert main([*argv, "--debug"]) == 2  # after the command too
    assert "Traceback" in capsys.readouterr().err


def test_internal_errors_say_so_in_one_line(image, tmp_path, capsys, monkeypatch):
    import lightsr.cli.upscale as up

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(up, "collect_inputs", broken)
    assert main(["upscale", str(image), "-o", str(tmp_path / "o")]) == 1
    err = _err_lines(capsys)
    assert len(err) == 1 and "internal error: ZeroDivisionError: division by zero" in err[0] and "--debug" in err[0]
    monkeypatch.setenv("LIGHTSR_DEBUG", "1")  # the traceback first, then the same line
    assert main(["upscale", str(image), "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in broken" in err
    assert err.strip().splitlines()[-1].startswith("lightsr upscale: error: internal error: ZeroDivisionError")


def test_help_shows_the_default_model_name(capsys):
    """Issue 22 item 11: not 'default: lightsr.pretrained.DEFAULT_MODEL'."""
    from lightsr.pretrained import DEFAULT_MODEL

    with pytest.raises(SystemExit):
        main(["upscale", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"(default: {DEFAULT_MODEL};" in out and "lightsr.pretrained.DEFAULT_MODEL" not in out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "exit codes: 0 success; 1" in capsys.readouterr().out


def test_one_line_cleans_messages():
    text = "\x1b[31mWeights only load failed.\x1b[0m\n\nTrying to load\tsomething " + "word " * 200
    line = one_line(text)
    assert "\x1b" not in line and "\n" not in line and "\t" not in line
    assert len(line) <= 400 and line.endswith(" ...") and not line[:-4].endswith(" wor")  # cut at a word
    assert one_line(KeyError("unknown model 'x'")) == "unknown model 'x'"  # no KeyError quotes


def test_no_traceback_in_a_fresh_process(tmp_path):
    """The installed entry point: a bad weights file is one line on stderr, exit code 2."""
    (tmp_path / "w.pth").write_bytes(b"\xff\xd8\xff\xe0 a JPEG renamed")
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    proc = subprocess.run([sys.executable, "-m", "lightsr", "upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"),
                           "--weights", str(tmp_path / "w.pth")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and "it is a JPEG image" in proc.stderr
