"""`lightsr upscale` end to end: image kinds, bad files in a batch, never losing data."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lightsr
from lightsr.cli import main
from lightsr.inference.io import ORIENTATION_TAG, read_image

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A real lightsr model file, reduced so that the tests are fast (LAMNet operators, 1 block)."""
    import torch

    torch.manual_seed(0)
    model = lightsr.create_model("lamnet", 2, num_groups=1, num_blocks=1, dim=16)
    return lightsr.save_model(model, tmp_path_factory.mktemp("w") / "lamnet_tiny_x2.safetensors")


def run(*argv) -> int:
    return main(["upscale", *map(str, argv)])


def _png16(path: Path, arr: np.ndarray) -> None:
    h, w, c = arr.shape
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _png_bit_depth(path: Path) -> int:
    return path.read_bytes()[24]


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".part"]


def test_image_kinds(tmp_path, weights):
    src = tmp_path / "in"
    src.mkdir()
    rgb = RNG.integers(0, 256, size=(12, 15, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(src / "rgb.png")
    opaque = np.dstack([rgb, np.full((12, 15), 255, np.uint8)])
    Image.fromarray(opaque).save(src / "rgba_opaque.png")
    soft = np.dstack([rgb, RNG.integers(0, 256, size=(12, 15), dtype=np.uint8)])
    Image.fromarray(soft).save(src / "rgba.png")
    Image.fromarray(np.dstack([rgb[..., 0], rgb[..., 1]])).save(src / "la.png")
    Image.fromarray(rgb[..., 0]).save(src / "gray.png")
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal.save(src / "palette.png", transparency=0)
    _png16(src / "deep.png", RNG.integers(0, 65536, size=(12, 15, 3), dtype=np.uint16))
    Image.fromarray(RNG.integers(0, 65536, size=(12, 15), dtype=np.uint16)).save(src / "deep_gray.tif")
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6  # displayed rotated 90 degrees clockwise
    Image.fromarray(rgb).save(src / "rotated.jpg", exif=exif.tobytes(), quality=95)
    Image.fromarray(rgb).save(src / "photo.webp")
    Image.fromarray(rgb).save(src / "old.bmp")

    assert run(src, "-o", tmp_path / "out", "--weights", weights, "--quiet") == 0
    out = tmp_path / "out"
    expect = {  # name -> (mode as read back, dtype, (width, height))
        "rgb_x2.png": ("RGB", np.uint8, (30, 24)),
        "rgba_opaque_x2.png": ("RGBA", np.uint8, (30, 24)),
        "rgba_x2.png": ("RGBA", np.uint8, (30, 24)),
        "la_x2.png": ("LA", np.uint8, (30, 24)),
        "gray_x2.png": ("L", np.uint8, (30, 24)),
        "palette_x2.png": ("RGBA", np.uint8, (30, 24)),
        "deep_x2.png": ("RGB", np.uint16, (30, 24)),
        "deep_gray_x2.tif": ("L", np.uint16, (30, 24)),
        "rotated_x2.jpg": ("RGB", np.uint8, (24, 30)),  # orientation applied: width and height swap
        "photo_x2.webp": ("RGB", np.uint8, (30, 24)),
        "old_x2.bmp": ("RGB", np.uint8, (30, 24)),
    }
    assert sorted(p.name for p in out.iterdir()) == sorted(expect)
    for name, (mode, dtype, size) in expect.items():
        data = read_image(out / name)
        assert (data.mode, data.pixels.dtype, data.size) == (mode, dtype, size), name
    assert (read_image(out / "rgba_opaque_x2.png").pixels[..., 3] == 255).all()
    assert _png_bit_depth(out / "deep_x2.png") == 16
    with Image.open(out / "rotated_x2.jpg") as im:
        assert im.getexif().get(ORIENTATION_TAG) == 1  # tag reset: viewers must not rotate again


def test_bad_files_do_not_stop_the_batch(tmp_path, weights, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        Image.fromarray(RNG.integers(0, 256, size=(10, 9, 3), dtype=np.uint8)).save(src / f"good{i}.png")
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    (src / "corrupt.png").write_bytes(buf.getvalue()[:200])
    (src / "empty.jpg").write_bytes(b"")
    (src / "notes.txt").write_text("not an image\n")
    out = tmp_path / "out"
    assert run(src, "-o", out, "--weights", weights) == 1
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 3
    for bad in ("corrupt.png", "empty.jpg", "notes.txt"):
        assert sum(bad in l for l in lines) == 1
    assert sorted(p.name for p in out.iterdir()) == ["good0_x2.png", "good1_x2.png", "good2_x2.png"]
    assert _leftovers(out) == []
    assert "3 failed" in err


def test_existing_outputs_and_inputs_are_never_overwritten(tmp_path, weights, capsys):
    src = tmp_path / "a.png"
    Image.fromarray(RNG.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(src)
    before = src.read_bytes()
    # output path == input path
    assert run(src, "-o", tmp_path, "--suffix", "", "--weights", weights, "--overwrite") == 1
    assert "overwrite an input" in capsys.readouterr().err
    assert src.read_bytes() == before
    # existing output kept without --overwrite, replaced with it
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_x2.png").write_bytes(b"mine")
    assert run(src, "-o", out, "--weights", weights) == 0
    assert (out / "a_x2.png").read_bytes() == b"mine"
    assert "skip" in capsys.readouterr().out
    assert run(src, "-o", out, "--weights", weights, "--overwrite") == 0
    assert read_image(out / "a_x2.png").size == (16, 16)


def test_interrupt_while_writing_leaves_no_partial_file(tmp_path, weights, monkeypatch):
    src = tmp_path / "a.png"
    Image.fromarray(RNG.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(src)

    def interrupted_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted_save)
    out = tmp_path / "out"
    assert run(src, "-o", out, "--weights", weights) == 130
    assert list(out.iterdir()) == []


def test_weights_errors(tmp_path, weights, capsys):
    src = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(src)
    assert run(src, "-o", tmp_path / "o", "--model", "lamnet_large", "--scale", "4") == 2
    err = capsys.readouterr().err
    assert "--weights" in err and len(err.strip().splitlines()) == 1
    assert run(src, "-o", tmp_path / "o", "--weights", weights, "--scale", "4") == 2
    assert "x2" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_recursive_globs_and_limits(tmp_path, weights, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.new("RGB", (6, 5)).save(src / "top.png")
    Image.new("RGB", (6, 5)).save(src / "sub" / "deep.jpg")
    Image.new("RGB", (60, 50)).save(src / "big.png")
    out = tmp_path / "out"
    assert run(src, "-o", out, "--weights", weights, "--recursive", "--max-pixels", "1000", "--quiet") == 1
    assert (out / "top_x2.png").is_file() and (out / "sub" / "deep_x2.jpg").is_file()
    assert "big.png" in capsys.readouterr().err
    out2 = tmp_path / "out2"
    assert run(str(src / "*.png"), "-o", out2, "--weights", weights, "--format", "webp", "--quiet") == 0
    assert sorted(p.name for p in out2.iterdir()) == ["big_x2.webp", "top_x2.webp"]
    assert run(str(src / "*.gif"), "-o", out2, "--weights", weights) == 1
    assert "no file matches" in capsys.readouterr().err


def test_alpha_to_jpeg_writes_png_instead(tmp_path, weights, capsys):
    src = tmp_path / "a.png"
    Image.fromarray(RNG.integers(0, 256, size=(6, 6, 4), dtype=np.uint8)).save(src)
    assert run(src, "-o", tmp_path / "o", "--weights", weights, "--format", "jpg") == 0
    assert (tmp_path / "o" / "a_x2.png").is_file()
    assert "no alpha" in capsys.readouterr().err


@pytest.mark.parametrize("overwrite", [False, True])
def test_two_inputs_with_the_same_output_name(tmp_path, weights, capsys, overwrite):
    """cat.png and cat.jpg both map to cat_x2.png with --format png: the first is written, the
    second is an error (not a silent "exists" skip of the file this run just wrote, nor a
    replacement of it with --overwrite), and the batch exits non-zero."""
    src = tmp_path / "in"
    src.mkdir()
    png = RNG.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    Image.fromarray(png).save(src / "cat.png")
    Image.fromarray(RNG.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)).save(src / "cat.jpg", quality=95)
    out = tmp_path / "out"
    argv = [src / "cat.png", src / "cat.jpg", "-o", out, "--weights", weights, "--format", "png"]
    assert run(*argv, *(["--overwrite"] if overwrite else [])) == 1
    err = capsys.readouterr().err
    assert "same output name" in err and "cat.jpg" in err
    assert read_image(out / "cat_x2.png").size == (16, 16)  # the first input's result, kept
    assert [p.name for p in out.iterdir()] == ["cat_x2.png"]


# -- issue 22 ------------------------------------------------------------------------------------------
def test_outputs_of_earlier_runs_are_never_inputs(tmp_path, weights, capsys):
    """`upscale in -o in` twice: the second run does not upscale a_x2.png into a_x2_x2.png (item 5)."""
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(RNG.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(src / "a.png")
    Image.fromarray(RNG.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(src / "sub" / "b.png")
    for _ in range(2):
        assert run(src, "-o", src, "--weights", weights) == 0
    assert sorted(p.name for p in src.iterdir() if p.is_file()) == ["a.png", "a_x2.png"]
    out = capsys.readouterr().out
    assert "skip: " in out and "a_x2.png: output(s) of an earlier run" in out
    for _ in range(2):  # recursive: outputs beside the inputs in every sub-folder
        assert run(src, "-o", src, "--weights", weights, "--recursive", "--quiet") == 0
    assert sorted(p.name for p in (src / "sub").iterdir()) == ["b.png", "b_x2.png"]
    assert not list(src.rglob("*_x2_x2*"))
    # a glob into the output folder, and a custom suffix
    assert run(str(src / "*.png"), "-o", src, "--weights", weights, "--suffix", "_up{scale}x", "--quiet") == 0
    assert run(str(src / "*.png"), "-o", src, "--weights", weights, "--suffix", "_up{scale}x", "--quiet") == 0
    assert sorted(p.name for p in src.glob("a*")) == ["a.png", "a_up2x.png", "a_x2.png", "a_x2_up2x.png"]
    # a file named explicitly is always an input
    assert run(src / "a_x2.png", "-o", tmp_path / "o2", "--weights", weights, "--quiet") == 0
    assert (tmp_path / "o2" / "a_x2_x2.png").is_file()


def test_stale_part_files_of_a_killed_run_are_removed(tmp_path, weights, capsys):
    import os
    import time

    src = tmp_path / "a.png"
    Image.fromarray(RNG.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(src)
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".a_x2.png.x1y2z3w4.part"  # what a SIGKILL during a write leaves
    stale.write_bytes(b"\x89PNG half")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert run(src, "-o", out, "--weights", weights) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_x2.png"]
    assert "removed 1 unfinished .part file" in capsys.readouterr().err


def test_nan_weights_exit_non_zero_and_write_nothing(tmp_path, weights, capsys):
    """Item 2: NaN weights are refused at load; overflowing weights fail the image; nothing is written."""
    import torch
    from safetensors.torch import load_file, save_file

    from lightsr.weights import read_checkpoint

    sd, meta = read_checkpoint(weights)
    src = tmp_path / "a.png"
    Image.fromarray(RNG.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(src)
    bad = {k: v.clone() for k, v in sd.items()}
    name = sorted(bad)[3]
    bad[name].view(-1)[0] = float("nan")
    save_file(bad, tmp_path / "nan.safetensors", metadata=meta)
    out = tmp_path / "out"
    assert run(src, "-o", out, "--weights", tmp_path / "nan.safetensors") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"tensor '{name}' holds 1 NaN/Inf value" in err[0]
    assert not out.exists()
    # finite weights that overflow: the image fails (exit 1), nothing is written, no black image
    big = {k: v * 1e6 if v.is_floating_point() else v for k, v in sd.items()}
    save_file(big, tmp_path / "big.safetensors", metadata=meta)
    assert run(src, "-o", out, "--weights", tmp_path / "big.safetensors") == 1
    err = capsys.readouterr().err
    assert "NaN/Inf" in err and "0 written" in err
    assert not out.exists() or list(out.iterdir()) == []
    del load_file, torch


def test_progress_lines_without_a_terminal(tmp_path, weights, capsys, monkeypatch):
    """Item 9: tiles and images report elapsed time and ETA as plain lines when stderr is not a tty."""
    import time

    import lightsr.cli.upscale as up

    monkeypatch.setenv("LIGHTSR_PROGRESS_INTERVAL", "0.01")
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        Image.fromarray(RNG.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)).save(src / f"p{i}.png")
    assert run(src, "-o", tmp_path / "o", "--weights", weights, "--tile", "16", "--tile-overlap", "4") == 0
    err = capsys.readouterr().err
    tiles = [line for line in err.splitlines() if line.startswith("  p0.png: ")]
    images = [line for line in err.splitlines() if line.startswith("images: ")]
    assert tiles and "elapsed" in tiles[-1] and "ETA" in tiles[-1] and "/9 (" in tiles[-1]
    assert images and "elapsed" in images[-1] and "ETA" in images[-1]
    assert "\r" not in err
    # a whole image in one pass: an estimated ETA while it runs
    from lightsr.inference import Upscaler

    monkeypatch.setattr(up, "LONG_IMAGE_PIXELS", 1)
    original = Upscaler.upscale_image

    def slow(self, *args, **kwargs):  # a pass long enough for the heartbeat to speak
        time.sleep(0.3)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Upscaler, "upscale_image", slow)
    assert run(src, "-o", tmp_path / "o2", "--weights", weights, "--tile", "0") == 0
    whole = [line for line in capsys.readouterr().err.splitlines() if line.startswith("  p0.png")]
    assert whole and "(estimate)" in whole[0] and "elapsed" in whole[0]
    # -q: no progress at all
    assert run(src, "-o", tmp_path / "o3", "--weights", weights, "--tile", "16", "-q") == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith("lightsr upscale: 2 written")


def test_memory_refusal_message_is_consistent(tmp_path, weights, capsys, monkeypatch):
    """Item 11: 'needs 17.9 GiB but only 20.7 GiB is free' contradicted itself."""
    import lightsr.inference.runner as runner

    src = tmp_path / "a.png"
    Image.fromarray(RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(src)
    monkeypatch.setattr(runner, "available_memory", lambda device, **kw: 55_000)  # 49152 bytes needed
    assert run(src, "-o", tmp_path / "o", "--weights", weights) == 1
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("error:"))
    assert "needs 0.0 GiB" not in line or "more than the" in line
    assert "128x128 output needs" in line and "more than the" in line and "80% of the" in line


def test_weights_urls_quiet_and_capped(tmp_path, weights, capsys, monkeypatch):
    """Item 9: -q hides the download progress; --max-download caps a download, nothing is cached."""
    monkeypatch.setenv("LIGHTSR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LIGHTSR_PROGRESS_INTERVAL", "0")
    src = tmp_path / "a.png"
    Image.fromarray(RNG.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(src)
    url = weights.as_uri()
    assert run(src, "-o", tmp_path / "o", "--weights", url, "--max-download", "1k") == 2
    err = capsys.readouterr().err
    assert "more than the download limit of 1.0 KB" in err and "--max-download" in err
    assert not list((tmp_path / "cache").rglob("*.safetensors")) and not list((tmp_path / "cache").rglob("*.part"))
    assert run(src, "-o", tmp_path / "o", "--weights", url, "-q") == 0
    assert "downloading" not in capsys.readouterr().err
    assert run(src, "-o", tmp_path / "o2", "--weights", url + "x", "--max-download", "lots") == 2
    assert "--max-download" in capsys.readouterr().err
