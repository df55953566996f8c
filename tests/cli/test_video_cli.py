"""The video step of `lightsr upscale` (lightsr.cli.video_args): options, names, one line per problem."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch.nn as nn
import torch.nn.functional as F

from lightsr.cli.video_args import (
    VIDEO_EPILOG,
    add_video_arguments,
    check_video_arguments,
    is_video_path,
    upscale_video_file,
    video_output_path,
)
from lightsr.inference import Upscaler

from video_clips import av, needs_av  # noqa: F401  (av: None without PyAV)
from video_clips import clip as _clip


def clip(path: Path, n: int = 6, size=(32, 24)) -> Path:
    return _clip(path, n, size, step=2)


class Nearest(nn.Module):
    """x2 nearest-neighbour 'model'; raises ``fail`` on call number ``fail_at`` (to test failures)."""

    scale = 2

    def __init__(self, fail_at: int | None = None, fail: BaseException | None = None):
        super().__init__()
        self.calls, self.fail_at, self.fail = 0, fail_at, fail

    def forward(self, x):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise self.fail
        return F.interpolate(x, scale_factor=2, mode="nearest")


def parser() -> argparse.ArgumentParser:
    """The video options plus the upscale options that the video step reads."""
    p = argparse.ArgumentParser()
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument("--max-pixels", type=float, default=None)
    add_video_arguments(p)
    return p




class Lines:
    """Collects what the video step says (stdout) and reports (stderr)."""

    def __init__(self):
        self.out: list[str] = []
        self.err: list[str] = []

    def kwargs(self) -> dict:
        return {"say": self.out.append, "err": self.err.append}


def test_options_are_checked_with_one_line_errors():
    p = parser()
    assert check_video_arguments(p.parse_args([])) is None
    assert check_video_arguments(p.parse_args(["--frames", "10:20", "--preview", "3", "--crf", "20"])) is None
    assert "--frames" in check_video_arguments(p.parse_args(["--frames", "20:10"]))
    assert "--preview" in check_video_arguments(p.parse_args(["--preview", "0"]))
    assert "--segment-frames" in check_video_arguments(p.parse_args(["--segment-frames", "0"]))
    with pytest.raises(SystemExit):
        p.parse_args(["--container", "flv"])
    assert 'pip install "lightsr[video]"' in VIDEO_EPILOG


def test_output_names(tmp_path):
    p = parser()
    args = p.parse_args([])
    assert video_output_path(tmp_path, Path("a/clip.mkv"), "_x4", args) == tmp_path / "a" / "clip_x4.mkv"
    assert video_output_path(tmp_path, Path("anim.gif"), "_x4", args) == tmp_path / "anim_x4.mp4"
    assert video_output_path(tmp_path, Path("clip.mp4"), "_x2", p.parse_args(["--container", "webm"])) == \
        tmp_path / "clip_x2.webm"
    assert video_output_path(tmp_path, Path("clip.mp4"), "_x2", p.parse_args(["--preview", "4"])) == \
        tmp_path / "clip_x2_preview"
    assert is_video_path("x.mov") and not is_video_path("x.jpg")


@needs_av
def test_progress_without_a_terminal_prints_frames_per_second_and_eta(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LIGHTSR_PROGRESS_INTERVAL", "0.01")
    src = clip(tmp_path / "c.mp4", n=6)
    lines = Lines()
    slow = Upscaler(Nearest())
    upscale = slow.upscale_pixels

    def upscale_slowly(pixels):
        time.sleep(0.03)
        return upscale(pixels)

    slow.upscale_pixels = upscale_slowly
    assert upscale_video_file(src, tmp_path / "o.mp4", parser().parse_args([]), slow, **lines.kwargs())
    printed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("c.mp4: ")]
    counted = [line for line in printed if not line.startswith("c.mp4: 0/6")]  # after the first frame
    assert counted, f"no progress line without a terminal: {printed}"
    assert all(" | ETA " in line and " frames/s" in line for line in counted)


def test_without_pyav_each_video_gets_one_install_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    (tmp_path / "a.mp4").write_bytes(b"\x00" * 64)
    lines = Lines()
    ok = upscale_video_file(tmp_path / "a.mp4", tmp_path / "out" / "a_x2.mp4", parser().parse_args([]),
                            Upscaler(Nearest()), **lines.kwargs())
    assert not ok and lines.err == [f'error: {tmp_path / "a.mp4"}: video needs PyAV (FFmpeg for Python): '
                                    f'pip install "lightsr[video]"']


@needs_av
def test_a_batch_goes_on_after_bad_videos(tmp_path):
    good = clip(tmp_path / "good.mp4")
    (tmp_path / "bad.mp4").write_text("not a video\n")
    (tmp_path / "empty.mkv").write_bytes(b"")
    args = parser().parse_args([])
    up = Upscaler(Nearest())
    lines = Lines()
    results = [upscale_video_file(src, tmp_path / "out" / f"{src.stem}_x2.mp4", args, up, **lines.kwargs())
               for src in (tmp_path / "bad.mp4", tmp_path / "empty.mkv", good)]
    assert results == [False, False, True]
    assert len(lines.err) == 2 and all(line.startswith("error: ") and "\n" not in line for line in lines.err)
    assert "bad.mp4: not a readable video" in lines.err[0] and "empty.mkv: empty file" in lines.err[1]
    assert len(lines.out) == 1 and "good.mp4 -> " in lines.out[0] and "6 frames" in lines.out[0]
    with av.open(str(tmp_path / "out" / "good_x2.mp4")) as c:
        assert c.streams.video[0].width == 64 and len(list(c.decode(video=0))) == 6


@needs_av
def test_existing_output_is_skipped_and_kept(tmp_path):
    src = clip(tmp_path / "c.mp4", n=2)
    out = tmp_path / "c_x2.mp4"
    out.write_bytes(b"keep me")
    lines = Lines()
    assert upscale_video_file(src, out, parser().parse_args([]), Upscaler(Nearest()), **lines.kwargs())
    assert lines.out == [f"skip: {out} exists (use --overwrite to replace it)"] and out.read_bytes() == b"keep me"
    assert upscale_video_file(src, out, parser().parse_args(["--overwrite", "-q"]), Upscaler(Nearest()),
                              **lines.kwargs())
    assert out.read_bytes() != b"keep me" and len(lines.out) == 1  # quiet: no line


@needs_av
def test_frames_and_preview_options(tmp_path):
    src = clip(tmp_path / "c.mp4", n=8)
    lines = Lines()
    out = tmp_path / "trim.mkv"
    assert upscale_video_file(src, out, parser().parse_args(["--frames", "2:5", "--container", "mkv"]),
                              Upscaler(Nearest()), **lines.kwargs())
    with av.open(str(out)) as c:
        assert len(list(c.decode(video=0))) == 3
    folder = video_output_path(tmp_path, Path("c.mp4"), "_x2", parser().parse_args(["--preview", "2"]))
    assert upscale_video_file(src, folder, parser().parse_args(["--preview", "2"]), Upscaler(Nearest()),
                              **lines.kwargs())
    assert sorted(p.name for p in folder.iterdir()) == ["c_frame000002_x2.png", "c_frame000006_x2.png",
                                                       "c_preview_x2.png"]
    assert "side by side: c_preview_x2.png" in lines.out[-1]


@needs_av
def test_model_failure_is_one_line_and_ctrl_c_says_how_to_resume(tmp_path):
    src = clip(tmp_path / "c.mp4", n=6)
    lines = Lines()
    args = parser().parse_args(["--segment-frames", "2", "-q"])
    failing = Upscaler(Nearest(fail_at=2, fail=RuntimeError("boom\nsecond line")))
    assert not upscale_video_file(src, tmp_path / "a.mp4", args, failing, **lines.kwargs())
    assert lines.err == [f"error: {src}: the model failed: boom second line"]
    interrupted = Upscaler(Nearest(fail_at=4, fail=KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        upscale_video_file(src, tmp_path / "b.mp4", args, interrupted, **lines.kwargs())
    assert lines.err[-1].startswith("interrupted: the finished segments of c.mp4 are kept in ")
    assert lines.err[-1].endswith("run the same command with --resume to continue")
    assert not (tmp_path / "b.mp4").exists()
    resumed = parser().parse_args(["--segment-frames", "2", "--resume"])
    assert upscale_video_file(src, tmp_path / "b.mp4", resumed, Upscaler(Nearest()), **lines.kwargs())
    assert "6 frames, 2 resumed" in lines.out[-1]


# ------------------------------------------------------------------------------------------------
# through the command line: `lightsr upscale clip.mp4 -o out/`, alone and in a batch with images
@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A real lightsr model file, reduced so that the tests are fast (LAMNet operators, 1 block)."""
    import torch

    import lightsr

    torch.manual_seed(0)
    model = lightsr.create_model("lamnet", 2, num_groups=1, num_blocks=1, dim=16)
    return lightsr.save_model(model, tmp_path_factory.mktemp("w") / "lamnet_tiny_x2.safetensors")


def upscale(*argv) -> int:
    from lightsr.cli import main

    return main(["upscale", *map(str, argv)])


@needs_av
def test_lightsr_upscale_takes_a_video(tmp_path, weights, capsys):
    src = clip(tmp_path / "clip.mp4", n=5, size=(30, 22))
    out = tmp_path / "out"
    assert upscale(src, "-o", out, "--weights", weights, "--threads", "1") == 0
    printed = capsys.readouterr().out
    assert f"{src} -> {out / 'clip_x2.mp4'} (5 frames" in printed and "lightsr upscale: 1 written to" in printed
    with av.open(str(out / "clip_x2.mp4")) as c:
        stream = c.streams.video[0]
        assert (stream.width, stream.height) == (60, 44) and len(list(c.decode(video=0))) == 5
    assert sorted(p.name for p in out.iterdir()) == ["clip_x2.mp4"]  # no segment folder left
    assert upscale(src, "-o", out, "--weights", weights, "--threads", "1") == 0  # a second run keeps it
    assert "skip: " in capsys.readouterr().out


@needs_av
def test_a_batch_of_images_and_a_broken_video_goes_on(tmp_path, weights, capsys):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "b.jpg"):
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (10, 14, 3), dtype=np.uint8)).save(src / name)
    (src / "broken.mp4").write_bytes(clip(tmp_path / "whole.mp4").read_bytes()[:300])  # cut before its index
    clip(src / "good.mkv", n=3)
    out = tmp_path / "out"
    assert upscale(src, "-o", out, "--weights", weights, "--threads", "1") == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {src / 'broken.mp4'}: ")
    assert sorted(p.name for p in out.iterdir()) == ["a_x2.png", "b_x2.jpg", "good_x2.mkv"]
    assert "lightsr upscale: 3 written to" in captured.err and "1 failed" in captured.err
