"""lightsr.upscale_video on clips generated here: frames, timestamps, colour, audio, rotation, resume.

Every clip is made by PyAV in the test (a few frames of 32-64 pixels) and every output is decoded
back and checked. The model is a tiny fixed-weight network (a convolution and a pixel shuffle on
top of nearest-neighbour upscaling), so a clip is upscaled in well under a second.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import lightsr
from lightsr.inference import Upscaler
from lightsr.video import (
    INSTALL_HINT,
    VideoError,
    is_video_path,
    list_segments,
    output_suffix,
    parse_frames,
    segments_for_rank,
)
from lightsr.video.preview import spread

try:
    import av
except ImportError:  # the optional extra is missing: the pure tests still run
    av = None

needs_av = pytest.mark.skipif(av is None, reason='needs PyAV, the optional extra: pip install "lightsr[video]"')
MS = Fraction(1, 1000)
VFR_MS = [0, 40, 80, 150, 160, 200, 300, 310, 400, 440]  # variable frame rate, in milliseconds
BT709, BT601, BT2020, TV, PC = 1, 6, 9, 1, 2


class TinySR(nn.Module):
    """A fixed, deterministic x``scale`` network: nearest upscaling plus a small learned-looking residual."""

    def __init__(self, scale: int = 2, delay: float = 0.0):
        super().__init__()
        self.scale, self.delay = scale, delay
        self.conv = nn.Conv2d(3, 3 * scale * scale, 3, padding=1)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.05)
            self.conv.bias.zero_()

    def forward(self, x):
        if self.delay:
            time.sleep(self.delay)
        return F.interpolate(x, scale_factor=self.scale, mode="nearest") + F.pixel_shuffle(self.conv(x), self.scale)


def pattern(i: int, w: int, h: int, deep: bool = False) -> np.ndarray:
    """Frame ``i``: smooth gradients, a moving square and saturated corners (matrix errors show there)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([x / max(1, w - 1), y / max(1, h - 1), 0.5 + 0.4 * np.sin((x + y + 5 * i) / 4)], -1)
    s = max(4, min(w, h) // 4)
    x0 = (3 * i) % max(1, w - s)
    img[2 : 2 + s, x0 : x0 + s] = (0.9, 0.2, 0.1)
    img[-6:, :6], img[-6:, -6:] = (0, 0, 1), (0, 1, 0)
    if deep:
        return np.round(img * 65535).astype(np.uint16)
    return np.round(img * 255).astype(np.uint8)


_SWS = {BT709: "itu709", BT601: "itu601", BT2020: "bt2020"}


def make_clip(path: Path, *, n: int = 8, size: tuple[int, int] = (48, 32), codec: str = "libx264",
              pix_fmt: str = "yuv420p", fmt: str | None = None, pts_ms: list[int] | None = None,
              audio: bool = False, rotation: int | None = None, colour=(BT709, TV, 1, 1),
              options: dict | None = None, subtitles: bool = False, chapters: bool = False,
              metadata: dict | None = None, sar: Fraction | None = None, attachment: bool = False) -> Path:
    """Write a test clip; timestamps in milliseconds (``pts_ms``, default 25 fps)."""
    w, h = size
    pts_ms = pts_ms or [40 * i for i in range(n)]
    deep = "10" in pix_fmt or "16" in pix_fmt
    out = av.open(str(path), "w", format=fmt)
    v = out.add_stream(codec, rate=25, options=options or {})
    v.width, v.height, v.pix_fmt = w, h, pix_fmt
    v.time_base = v.codec_context.time_base = MS
    ctx = v.codec_context
    ctx.colorspace, ctx.color_range, ctx.color_primaries, ctx.color_trc = colour
    if rotation is not None:
        v.set_display_rotation(rotation)
    if sar is not None:
        ctx.sample_aspect_ratio = sar
    if attachment:
        out.add_attachment("font.ttf", "application/x-truetype-font", b"not really a font" * 4)
    a = out.add_stream("aac", rate=48000, layout="stereo") if audio else None
    sub = out.add_mux_stream("subrip") if subtitles else None
    if sub is not None:
        sub.time_base = MS
    if chapters:
        out.set_chapters([{"id": 1, "start": 0, "end": 150, "time_base": MS, "metadata": {"title": "first"}},
                          {"id": 2, "start": 150, "end": pts_ms[-1], "time_base": MS, "metadata": {"title": "second"}}])
    out.metadata.update(metadata or {})
    for i, pts in enumerate(pts_ms):
        frame = av.VideoFrame.from_ndarray(pattern(i, w, h, deep), format="rgb48le" if deep else "rgb24")
        if not av.video.format.VideoFormat(pix_fmt).is_rgb:
            frame = frame.reformat(format=pix_fmt, dst_colorspace=_SWS[colour[0]], dst_color_range=colour[1])
        else:
            frame = frame.reformat(format=pix_fmt)
        frame.pts, frame.time_base = pts, MS
        out.mux(v.encode(frame))
        if sub is not None and i % 3 == 0:
            packet = av.Packet(f"line {i}".encode())
            packet.pts = packet.dts = pts
            packet.duration, packet.stream, packet.time_base = 100, sub, MS
            out.mux(packet)
    out.mux(v.encode())
    if a is not None:
        samples = int(48000 * (pts_ms[-1] + 40) / 1000)
        for k in range(0, samples, 1024):
            t = (np.arange(k, k + 1024) / 48000.0).astype(np.float32)
            af = av.AudioFrame.from_ndarray(np.stack([np.sin(2 * np.pi * 440 * t)] * 2) * 0.2, format="fltp", layout="stereo")
            af.sample_rate, af.pts = 48000, k
            out.mux(a.encode(af))
        out.mux(a.encode())
    out.close()
    return path


def decoded(path: Path, fmt: str = "rgb24") -> list[tuple[Fraction, np.ndarray]]:
    """(time in seconds, RGB array) of every frame of ``path``."""
    with av.open(str(path)) as c:
        return [(f.pts * f.time_base, f.to_ndarray(format=fmt)) for f in c.decode(video=0)]


def packets(path: Path, kind: str) -> list[tuple[Fraction, bytes]]:
    with av.open(str(path)) as c:
        streams = [s for s in c.streams if s.type == kind]
        if not streams:
            return []
        return [(p.pts * p.time_base, bytes(p)) for p in c.demux(*streams) if p.size]


def images_upscaled(src: Path, model: nn.Module) -> list[np.ndarray]:
    """The reference: each frame decoded by lightsr and upscaled as an image by the same model."""
    from lightsr.video.decode import iter_frames
    from lightsr.video.probe import probe_video

    info = probe_video(src)
    up = Upscaler(model, tile=0)
    return [up.upscale_pixels(rgb) for _, _, rgb in iter_frames(info, 0, info.frames)]


# -- pure parts (no PyAV needed) ----------------------------------------------------------------
def test_list_segments_cover_range_and_shard_disjointly():
    segs = list_segments(5, 28, 6)
    assert [(s.start, s.stop) for s in segs] == [(5, 11), (11, 17), (17, 23), (23, 28)]
    assert [s.index for s in segs] == [0, 1, 2, 3] and list_segments(3, 3, 4) == []
    shares = [segments_for_rank(segs, r, 3) for r in range(3)]
    assert sorted((s for share in shares for s in share), key=lambda s: s.index) == segs
    assert [len(s) for s in shares] == [2, 1, 1]
    with pytest.raises(ValueError):
        list_segments(0, 10, 0)
    with pytest.raises(ValueError):
        segments_for_rank(segs, 3, 3)


def test_frame_ranges_and_preview_spread():
    assert parse_frames("3:9") == (3, 9) and parse_frames(":4") == (0, 4) and parse_frames("7:") == (7, None)
    assert parse_frames(None) is None
    for bad in ("5", "4:2", "a:b", "-1:3", "3:3"):
        with pytest.raises(ValueError, match="--frames"):
            parse_frames(bad)
    assert spread(0, 100, 4) == [12, 37, 62, 87] and spread(10, 12, 5) == [10, 11]


def test_video_paths_and_output_suffix(tmp_path):
    from PIL import Image

    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    frames[0].save(tmp_path / "still.gif")
    assert is_video_path(tmp_path / "anim.gif") and not is_video_path(tmp_path / "still.gif")
    assert is_video_path("a.MP4") and is_video_path("b.mkv") and not is_video_path("c.png")
    assert output_suffix("a.gif") == ".mp4" and output_suffix("a.avi") == ".mp4" and output_suffix("a.webm") == ".webm"
    assert output_suffix("a.mp4", "mkv") == ".mkv"
    with pytest.raises(ValueError, match="container"):
        output_suffix("a.mp4", "flv")


def test_without_pyav_one_line_with_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    with pytest.raises(VideoError) as info:
        lightsr.upscale_video(tmp_path / "clip.mp4", tmp_path / "out.mp4", model=TinySR())
    assert str(info.value) == INSTALL_HINT and 'pip install "lightsr[video]"' in INSTALL_HINT


# -- colour ---------------------------------------------------------------------------------------
def _formula_rgb(yuv: np.ndarray, space: int, full: bool, bits: int) -> np.ndarray:
    """BT.601/709/2020 Y'CbCr -> R'G'B' in [0, 1], written from the standards (the test's oracle)."""
    kr, kb = {BT601: (0.299, 0.114), BT709: (0.2126, 0.0722), BT2020: (0.2627, 0.0593)}[space]
    m = 2 ** (bits - 8)
    y, cb, cr = (yuv[..., i].astype(np.float64) for i in range(3))
    if full:
        y, cb, cr = y / (255 * m), (cb - 128 * m) / (255 * m), (cr - 128 * m) / (255 * m)
    else:
        y, cb, cr = (y - 16 * m) / (219 * m), (cb - 128 * m) / (224 * m), (cr - 128 * m) / (224 * m)
    r, b = y + 2 * (1 - kr) * cr, y + 2 * (1 - kb) * cb
    g = (y - kr * r - kb * b) / (1 - kr - kb)
    return np.clip(np.stack([r, g, b], -1), 0, 1)


@needs_av
@pytest.mark.parametrize("space,rng,pix_fmt", [(BT709, TV, "yuv444p"), (BT601, TV, "yuv444p"),
                                               (BT709, PC, "yuv444p"), (BT2020, TV, "yuv444p10le")])
def test_rgb_conversion_follows_the_stream_matrix_and_range(tmp_path, space, rng, pix_fmt):
    from lightsr.video.decode import iter_frames
    from lightsr.video.probe import probe_video

    clip = make_clip(tmp_path / "c.mkv", n=2, codec="ffv1", pix_fmt=pix_fmt, colour=(space, rng, space, 1))
    info = probe_video(clip)
    bits = 10 if "10" in pix_fmt else 8
    with av.open(str(clip)) as c:
        planes = [np.stack([np.frombuffer(p, np.uint16 if bits > 8 else np.uint8).reshape(32, -1)[:, :48]
                            for p in f.planes], -1) for f in c.decode(video=0)]
    for (_, _, rgb), yuv in zip(iter_frames(info, 0, 2), planes):
        full = 65535 if bits > 8 else 255
        expected = _formula_rgb(yuv, space, rng == PC, bits) * full
        assert rgb.dtype == (np.uint16 if bits > 8 else np.uint8)
        # within one 8-bit level: FFmpeg's swscale scales limited-range samples deeper than 8 bits by
        # 219 * 257 * 2^(bits-16) instead of 219 * 2^(bits-8), so 10-bit white (940) becomes 65283/65535
        assert np.abs(rgb.astype(np.float64) - expected).max() <= (257 if bits > 8 else 1.0)


class Identity(nn.Module):
    scale = 1

    def forward(self, x):
        return x.clone()


@needs_av
@pytest.mark.parametrize("pix_fmt", ["yuv444p", "yuv444p10le"])
def test_yuv_comes_back_unchanged_through_the_pipeline(tmp_path, pix_fmt):
    """Decode -> RGB (8 or 16 bits) -> encode is lossless to within one level of the source depth."""
    clip = make_clip(tmp_path / "c.mkv", n=3, codec="ffv1", pix_fmt=pix_fmt, colour=(BT2020, TV, 9, 14))
    out = lightsr.upscale_video(clip, tmp_path / "o.mkv", model=Identity(), codec="ffv1", pix_fmt=pix_fmt,
                                progress=False).path
    dtype = np.uint16 if "10" in pix_fmt else np.uint8

    def planes(path):
        with av.open(str(path)) as c:
            return [np.stack([np.frombuffer(p, dtype).reshape(p.height, -1)[:, : p.width] for p in f.planes])
                    for f in c.decode(video=0)]

    got, want = planes(out), planes(clip)
    assert len(got) == len(want) == 3
    for g, w in zip(got, want):
        assert np.abs(g.astype(int) - w.astype(int)).max() <= 1


# -- upscaling: frames equal images upscaled --------------------------------------------------------
@needs_av
def test_8bit_odd_size_frames_equal_images_upscaled(tmp_path):
    model = TinySR(2)
    clip = make_clip(tmp_path / "odd.mkv", n=5, size=(35, 21), codec="ffv1", pix_fmt="yuv420p")
    out = tmp_path / "odd_x2.mkv"
    result = lightsr.upscale_video(clip, out, model=model, codec="ffv1", pix_fmt="bgr0", progress=False)
    assert result.path == out and result.total == result.frames == 5
    frames = decoded(out)
    expected = images_upscaled(clip, model)
    assert len(frames) == 5
    for (_, got), want in zip(frames, expected):
        assert got.shape == want.shape == (42, 70, 3)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


@needs_av
def test_10bit_goes_through_16_bits_and_comes_out_10bit(tmp_path):
    model = TinySR(2)
    clip = make_clip(tmp_path / "deep.mkv", n=4, codec="ffv1", pix_fmt="yuv420p10le", colour=(BT2020, TV, 9, 14))
    out = tmp_path / "deep_x2.mkv"
    lightsr.upscale_video(clip, out, model=model, codec="ffv1", pix_fmt="gbrp10le", progress=False)
    expected = images_upscaled(clip, model)
    assert expected[0].dtype == np.uint16
    for (_, got), want in zip(decoded(out, "rgb48le"), expected):
        got10 = got.astype(int) >> 6  # the 10-bit values (swscale widens v to v << 6 | v >> 4)
        want10 = np.round(want.astype(np.float64) * 1023 / 65535)
        assert np.abs(got10 - want10).max() <= 1
    # the default output of a 10-bit source is 10-bit YUV, with the source's colour tags
    default = tmp_path / "deep_default.mp4"
    lightsr.upscale_video(clip, default, model=model, progress=False)
    with av.open(str(default)) as c:
        f = next(c.decode(video=0))
        assert f.format.name == "yuv420p10le"
        assert (f.colorspace, f.color_range, f.color_primaries, f.color_trc) == (BT2020, TV, 9, 14)


@needs_av
def test_default_model_and_weights_on_a_small_clip(tmp_path):
    """The shipped default weights (x4) through the whole path: frames equal the images upscaled."""
    clip = make_clip(tmp_path / "c.mp4", n=3, size=(24, 16))
    out = lightsr.upscale_video(clip, tmp_path / "c_x4.mkv", codec="ffv1", pix_fmt="bgr0", tile=0, progress=False).path
    expected = images_upscaled(clip, Upscaler(tile=0).model)
    got = decoded(out)
    assert len(got) == 3 and got[0][1].shape == (64, 96, 3)
    for (_, g), want in zip(got, expected):
        assert np.abs(g.astype(int) - want.astype(int)).max() <= 1


@needs_av
def test_odd_output_sides_are_cropped_to_even_for_420(tmp_path):
    clip = make_clip(tmp_path / "odd.mkv", n=2, size=(35, 21), codec="ffv1", pix_fmt="yuv420p")
    notes: list[str] = []
    out = lightsr.upscale_video(clip, tmp_path / "odd_x3.mp4", model=TinySR(3), note=notes.append, progress=False).path
    assert notes == ["yuv420p needs even sides: the 105x63 frames are cropped to 104x62"]
    got = decoded(out)
    assert got[0][1].shape == (62, 104, 3) and len(got) == 2


@needs_av
@pytest.mark.parametrize("codec,bits,dst,expected", [
    ("hevc", 8, "o.mp4", ("libx265", "yuv420p")),
    ("vp9", 8, "o.mkv", ("libvpx-vp9", "yuv420p")),
    ("mpeg4", 8, "o.mp4", ("libx264", "yuv420p")),
    ("h264", 8, "o.webm", ("libvpx-vp9", "yuv420p")),
    ("h264", 10, "o.mp4", ("libx264", "yuv420p10le")),
    ("prores", 10, "o.mov", ("libx265", "yuv420p10le")),
])
def test_default_codec_follows_the_source_family(codec, bits, dst, expected):
    from lightsr.video.colour import Colour
    from lightsr.video.encode import choose_output
    from lightsr.video.probe import VideoInfo

    info = VideoInfo(Path("in"), "mov", codec, 32, 24, "yuv420p", bits, MS, [0, 40], Fraction(25), Colour(), False)
    settings, notes = choose_output(info, dst, 2)
    assert (settings.codec, settings.pix_fmt) == expected and notes == []
    assert settings.crf == {"libx264": 18, "libx265": 20, "libvpx-vp9": 24}[settings.codec]
    assert (settings.width, settings.height) == (64, 48)
    with pytest.raises(VideoError, match="cannot be stored"):
        choose_output(info, "o.webm", 2, codec="libx264")
    with pytest.raises(VideoError, match="--crf does not apply"):
        choose_output(info, "o.mkv", 2, codec="ffv1", crf=10)
    narrow = VideoInfo(Path("in"), "mov", codec, 24, 24, "yuv420p", bits, MS, [0], None, Colour(), False)
    assert choose_output(narrow, dst, 2)[0].codec != "libx265"  # x265 crashes on some frames 48 pixels wide
    with pytest.raises(VideoError, match="narrower than 64"):
        choose_output(narrow, "o.mkv", 2, codec="libx265")


# -- timestamps, audio, rotation, metadata -------------------------------------------------------
@needs_av
def test_vfr_audio_rotation_and_metadata_kept(tmp_path):
    clip = make_clip(tmp_path / "vfr.mp4", pts_ms=VFR_MS, audio=True, rotation=90, metadata={"title": "holiday"},
                     sar=Fraction(4, 3))
    out = tmp_path / "vfr_x2.mp4"
    lightsr.upscale_video(clip, out, model=TinySR(2), segment_frames=3, progress=False)
    src, got = decoded(clip), decoded(out)
    assert [t for t, _ in got] == [t for t, _ in src] == [Fraction(ms, 1000) for ms in VFR_MS]
    assert packets(out, "audio") == packets(clip, "audio")  # copied, not re-encoded: same bytes, same times
    assert len(packets(clip, "audio")) > 10
    with av.open(str(out)) as c:
        assert c.metadata.get("title") == "holiday"
        v = c.streams.video[0]
        assert v.codec_context.name == "h264" and v.width == 96 and v.height == 64
        assert v.sample_aspect_ratio == Fraction(4, 3)
        f = next(c.decode(video=0))
        assert f.rotation == 90 and f.format.name == "yuv420p"
        assert (f.colorspace, f.color_range) == (BT709, TV)


@needs_av
def test_frames_trim_keeps_audio_in_sync(tmp_path):
    clip = make_clip(tmp_path / "t.mp4", pts_ms=VFR_MS, audio=True)
    out = tmp_path / "t_x2.mp4"
    result = lightsr.upscale_video(clip, out, model=TinySR(2), frames=(3, 7), progress=False)
    assert result.total == 4
    times = [t for t, _ in decoded(out)]
    assert times == [Fraction(ms - 150, 1000) for ms in VFR_MS[3:7]]  # shifted so the clip starts at 0
    src_audio = packets(clip, "audio")
    kept = [(t - Fraction(150, 1000), data) for t, data in src_audio
            if t + Fraction(1024, 48000) > Fraction(150, 1000) and t < Fraction(300, 1000)]
    assert packets(out, "audio") == kept
    with pytest.raises(VideoError, match="selects no frame"):
        lightsr.upscale_video(clip, tmp_path / "none.mp4", model=TinySR(2), frames=(10, None), progress=False)


@needs_av
def test_subtitles_and_chapters_copied_where_the_container_allows(tmp_path):
    clip = make_clip(tmp_path / "s.mkv", n=10, subtitles=True, chapters=True, attachment=True)
    notes: list[str] = []
    mkv = lightsr.upscale_video(clip, tmp_path / "s_x2.mkv", model=TinySR(2), progress=False, note=notes.append)
    assert packets(mkv.path, "subtitle") == packets(clip, "subtitle") and len(packets(clip, "subtitle")) == 4
    with av.open(str(mkv.path)) as c:
        assert [ch["metadata"]["title"] for ch in c.chapters()] == ["first", "second"]
        (font,) = [s for s in c.streams if s.type == "attachment"]
        assert font.data == b"not really a font" * 4 and font.metadata["filename"] == "font.ttf"
    assert notes == []
    mp4 = lightsr.upscale_video(clip, tmp_path / "s_x2.mp4", model=TinySR(2), progress=False, note=notes.append)
    assert notes == ["stream #1 (subtitle, srt) is left out: the mp4 container cannot hold it",
                     "stream #2 (attachment, font.ttf) is left out: the mp4 container cannot hold it"]
    assert packets(mp4.path, "subtitle") == [] and len(decoded(mp4.path)) == 10


@needs_av
def test_animated_gif_becomes_mp4_with_its_delays(tmp_path):
    from PIL import Image

    frames = [Image.fromarray(pattern(i, 24, 16)) for i in range(4)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=[100, 200, 100, 100], loop=0)
    out = tmp_path / f"anim_x2{output_suffix(gif)}"
    lightsr.upscale_video(gif, out, model=TinySR(2), progress=False)
    got = decoded(out)
    assert [t for t, _ in got] == [Fraction(0), Fraction(1, 10), Fraction(3, 10), Fraction(4, 10)]
    assert got[0][1].shape == (32, 48, 3)


# -- long jobs: interrupts and resume ---------------------------------------------------------------
@needs_av
def test_ctrl_c_and_sigterm_leave_no_output_and_resume_completes(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", n=10)
    model = TinySR(2)
    reference = lightsr.upscale_video(clip, tmp_path / "ref.mp4", model=model, segment_frames=3, progress=False)
    out = tmp_path / "c_x2.mp4"

    def stop_after(n, how):
        def callback(done, total):
            if done == n:
                if how == "sigterm":
                    os.kill(os.getpid(), signal.SIGTERM)
                raise KeyboardInterrupt
        return callback

    for how, n in (("ctrl-c", 4), ("sigterm", 8)):
        with pytest.raises(KeyboardInterrupt):
            lightsr.upscale_video(clip, out, model=model, segment_frames=3, resume=True, progress=stop_after(n, how))
        assert not out.exists()
        leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".c_x2"))
        assert leftovers == [".c_x2.mp4.lightsr-segments"]  # no partial output file
        folder = tmp_path / leftovers[0]
        assert not [p for p in folder.iterdir() if ".part" in p.name]  # no partial segment either
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is restored
    upscaled = []
    result = lightsr.upscale_video(clip, out, model=model, segment_frames=3, resume=True,
                                   progress=lambda done, total: upscaled.append(done))
    assert result.resumed == 6 and result.frames == 4 and upscaled == [7, 8, 9, 10]
    assert packets(out, "video") == packets(reference.path, "video")
    assert not (tmp_path / ".c_x2.mp4.lightsr-segments").exists()


@needs_av
def test_leftover_segments_need_resume_and_matching_settings(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", n=6)
    out = tmp_path / "o.mp4"
    with pytest.raises(KeyboardInterrupt):
        lightsr.upscale_video(clip, out, model=TinySR(2), segment_frames=2,
                              progress=lambda d, t: (_ for _ in ()).throw(KeyboardInterrupt) if d == 3 else None)
    with pytest.raises(VideoError, match="--resume"):
        lightsr.upscale_video(clip, out, model=TinySR(2), segment_frames=2, progress=False)
    with pytest.raises(VideoError, match="other settings"):
        lightsr.upscale_video(clip, out, model=TinySR(2), segment_frames=2, crf=30, resume=True, progress=False)
    assert lightsr.upscale_video(clip, out, model=TinySR(2), segment_frames=2, resume=True, progress=False).resumed == 2


_KILLED_JOB = """
import sys, time, torch
sys.path.insert(0, {tests!r})
from test_video import TinySR
import lightsr
torch.set_num_threads(1)
lightsr.upscale_video({clip!r}, {out!r}, model=TinySR(2, delay=0.2), segment_frames=2, progress=False)
"""


@needs_av
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    clip = make_clip(tmp_path / "k.mp4", n=12, pts_ms=[0, 40, 80, 150, 160, 200, 300, 310, 400, 440, 480, 600],
                     audio=True)
    out = tmp_path / "k_x2.mp4"
    script = _KILLED_JOB.format(tests=str(Path(__file__).parent), clip=str(clip), out=str(out))
    job = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    folder = tmp_path / ".k_x2.mp4.lightsr-segments"
    deadline = time.monotonic() + 120
    while len(list(folder.glob("segment_*"))) < 2 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert job.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    assert not out.exists()
    finished = {p.name: p.stat().st_mtime_ns for p in folder.glob("segment_*")}
    assert 2 <= len(finished) < 6
    kept_frames = 2 * len(finished)
    seen = []
    result = lightsr.upscale_video(clip, out, model=TinySR(2), segment_frames=2, resume=True,
                                   progress=lambda d, t: seen.append(d))
    assert result.resumed == kept_frames and seen[0] == kept_frames + 1  # finished segments are not redone
    reference = lightsr.upscale_video(clip, tmp_path / "ref.mp4", model=TinySR(2), segment_frames=2, progress=False)
    assert packets(out, "video") == packets(reference.path, "video")
    assert packets(out, "audio") == packets(clip, "audio")


@needs_av
def test_shards_then_assembly_equal_a_single_run(tmp_path):
    clip = make_clip(tmp_path / "s.mp4", n=9)
    out = tmp_path / "s_x2.mp4"
    for rank in (1, 0):
        part = lightsr.upscale_video(clip, out, model=TinySR(2), segment_frames=2, shard=(rank, 2), progress=False)
        assert part.path is None and not out.exists()
    final = lightsr.upscale_video(clip, out, model=TinySR(2), segment_frames=2, resume=True, progress=False)
    assert final.frames == 0 and final.resumed == 9
    single = lightsr.upscale_video(clip, tmp_path / "one.mp4", model=TinySR(2), segment_frames=2, progress=False)
    assert packets(out, "video") == packets(single.path, "video")


@needs_av
def test_on_ready_is_called_once_the_segment_folder_exists_before_any_frame(tmp_path):
    clip = make_clip(tmp_path / "r.mp4", n=4)
    out = tmp_path / "r_x2.mp4"
    events = []

    def ready():
        events.append(("ready", (out.parent / f".{out.name}.lightsr-segments" / "plan.json").is_file()))

    lightsr.upscale_video(clip, out, model=TinySR(2), segment_frames=2, shard=(0, 2), on_ready=ready,
                          progress=lambda done, total: events.append(("frame", done)))
    assert events[0] == ("ready", True) and [e for e, _ in events].count("ready") == 1
    assert [d for e, d in events if e == "frame"] == [1, 2]  # rank 0's share: the first segment


@needs_av
def test_existing_output_is_kept_unless_overwrite(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", n=3)
    out = tmp_path / "o.mp4"
    out.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        lightsr.upscale_video(clip, out, model=TinySR(2), progress=False)
    assert out.read_bytes() == b"precious"
    lightsr.upscale_video(clip, out, model=TinySR(2), progress=False, overwrite=True)
    assert len(decoded(out)) == 3
    with pytest.raises(VideoError, match="overwrite the input"):
        lightsr.upscale_video(clip, clip, model=TinySR(2), progress=False, overwrite=True)


# -- preview --------------------------------------------------------------------------------------
@needs_av
def test_preview_writes_spread_frames_and_a_sheet(tmp_path):
    from PIL import Image

    clip = make_clip(tmp_path / "p.mp4", n=10)
    model = TinySR(2)
    paths = lightsr.video.preview_video(clip, tmp_path / "prev", 3, model=model)
    assert [p.name for p in paths] == ["p_frame000001_x2.png", "p_frame000005_x2.png", "p_frame000008_x2.png",
                                       "p_preview_x2.png"]
    expected = images_upscaled(clip, model)
    for p, index in zip(paths, (1, 5, 8)):
        np.testing.assert_array_equal(np.asarray(Image.open(p)), expected[index])
    with Image.open(paths[-1]) as sheet:
        assert sheet.size == (2 * 96, 3 * 64)


# -- bad input: one line each ----------------------------------------------------------------------
def _truncated(tmp_path):
    clip = make_clip(tmp_path / "full.mkv", n=60, audio=True)
    data = clip.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    return cut


def _audio_only(tmp_path):
    path = tmp_path / "sound.mp4"
    with av.open(str(path), "w") as out:
        a = out.add_stream("aac", rate=48000, layout="mono")
        for k in range(0, 48000, 1024):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 48000, k
            out.mux(a.encode(f))
        out.mux(a.encode())
    return path


def _unknown_codec(tmp_path):
    clip = make_clip(tmp_path / "h.mkv", n=3)
    data = clip.read_bytes()
    assert data.count(b"V_MPEG4/ISO/AVC") == 1
    bad = tmp_path / "unknown.mkv"
    bad.write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_LIGHTSR/NONE!"))
    return bad


def _no_frames(tmp_path, suffix=".mp4"):
    path = tmp_path / f"empty_clip{suffix}"
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 32, 32, "yuv420p"
        out.start_encoding()  # header written, no frame ever
    return path


def _written(name: str, data: bytes):
    def make(folder: Path) -> Path:
        (folder / name).write_bytes(data)
        return folder / name
    return make


BAD_INPUTS = {
    "empty": (_written("zero.mp4", b""), "empty file"),
    "not a video": (_written("notes.mp4", b"hello\n" * 50), "not a readable video"),
    "missing": (lambda d: d / "nowhere.mp4", "no such file"),
    "truncated": (_truncated, "truncated"),
    "no video stream": (_audio_only, "no video stream"),
    "unknown codec": (_unknown_codec, "cannot be decoded"),
    "zero frames": (_no_frames, "zero-length clip"),
    "header only": (lambda d: _no_frames(d, ".mkv"), "zero-length or truncated"),
}


@needs_av
@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_input_is_one_clear_line(tmp_path, kind):
    make, words = BAD_INPUTS[kind]
    src = make(tmp_path)
    out = tmp_path / "out" / "result.mp4"
    with pytest.raises(VideoError) as info:
        lightsr.upscale_video(src, out, model=TinySR(2), progress=False)
    message = str(info.value)
    assert words in message and "\n" not in message
    assert not out.exists() and not (out.parent / ".result.mp4.lightsr-segments").exists()


@needs_av
def test_frames_past_the_pixel_limit_are_refused(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", n=2)
    with pytest.raises(VideoError, match=r"48x32 frames are past the limit of 1,000 pixels"):
        lightsr.upscale_video(clip, tmp_path / "o.mp4", model=TinySR(2), max_pixels=1000, progress=False)
