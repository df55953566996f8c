"""Output settings (codec, quality, pixel format, size) and the encoder of one segment file.

Defaults a user would pick (``docs/video.md``):

* codec: the source's family when the output container can hold it (H.264 -> libx264, HEVC ->
  libx265, VP9 -> libvpx-vp9, AV1 -> libsvtav1), else the container's usual one (WebM: VP9,
  others: H.264);
* quality: constant quality (``crf``), near-transparent (:data:`~lightsr.video.formats.DEFAULT_CRF`);
* pixel format: ``yuv420p``, or ``yuv420p10le`` for sources of more than 8 bits; a 10-bit source
  outside those families is written as HEVC (then AV1), more widely played than 10-bit H.264;
* size: ``scale`` times the source, cropped by one pixel where 4:2:0 needs even sides.
"""
from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from lightsr.video.colour import Colour, output_colour, rgb_to_frame
from lightsr.video.errors import VideoError, ffmpeg_reason, require_av
from lightsr.video.formats import CONTAINERS, DEFAULT_CODEC, DEFAULT_CRF, ENCODER_OF_FAMILY
from lightsr.video.probe import VideoInfo

__all__ = ["OutputSettings", "SegmentWriter", "choose_output"]

DEEP_FALLBACKS = ("libx265", "libsvtav1")
# libx265 as shipped in PyAV's wheels corrupts the heap on some frames narrower than 64 pixels (48 wide)
MIN_WIDTH = {"libx265": 64}
SEGMENT_MUXERS = ("mp4", "mov", "matroska")  # mp4/mov keep any time base exactly
_SEGMENT_SUFFIX = {"mp4": ".mp4", "mov": ".mov", "matroska": ".mkv"}


@dataclass(frozen=True)
class OutputSettings:
    muxer: str
    codec: str
    pix_fmt: str
    crf: int | None
    width: int
    height: int
    colour: Colour
    options: dict = field(default_factory=dict)
    segment_muxer: str = "mp4"

    @property
    def segment_suffix(self) -> str:
        return _SEGMENT_SUFFIX[self.segment_muxer]

    def plan(self) -> dict:
        """The settings that change the encoded segments (for the resume plan)."""
        return {k: v for k, v in asdict(self).items() if k != "muxer"}


@lru_cache(maxsize=None)
def _muxer_codecs(muxer: str) -> frozenset[str]:
    av = require_av()
    with av.open(io.BytesIO(), "w", format=muxer) as probe:
        return frozenset(probe.supported_codecs)


@lru_cache(maxsize=None)
def _encoder_formats(codec: str) -> tuple[str, ...] | None:
    av = require_av()
    try:
        found = av.codec.Codec(codec, "w")
    except Exception:
        return None
    if found.type != "video":
        return None
    return tuple(f.name for f in (found.video_formats or ()))


def _codec_options(codec: str, crf: int | None) -> dict:
    options = {} if crf is None else {"crf": str(crf)}
    if codec == "libvpx-vp9":
        options.update({"b": "0", "row-mt": "1", "cpu-used": "4"} if crf is not None else {"row-mt": "1"})
    if codec == "libx265":
        options["x265-params"] = "log-level=error"
    return options


def _check_requested(codec: str, muxer: str, pix_fmt: str, width: int) -> None:
    formats = _encoder_formats(codec)
    if formats is None:
        raise VideoError(f"no video encoder named {codec!r} in this FFmpeg build")
    if codec not in _muxer_codecs(muxer):
        raise VideoError(f"{codec} cannot be stored in a {muxer} file: choose another --codec or container")
    if formats and pix_fmt not in formats:
        listed = ", ".join(formats[:8]) + (", ..." if len(formats) > 8 else "")
        raise VideoError(f"{codec} cannot encode {pix_fmt}; it takes {listed}")
    if width < MIN_WIDTH.get(codec, 0):
        raise VideoError(f"{codec} is not used for frames narrower than {MIN_WIDTH[codec]} pixels "
                         f"(it can crash on them): choose another --codec")


def _default_codec(info: VideoInfo, muxer: str, pix_fmt: str, width: int) -> str:
    """The source's family, then (10 bits) HEVC and AV1, then the container's usual codec."""
    deep = list(DEEP_FALLBACKS) if info.bits > 8 else []  # HEVC is more widely played than 10-bit H.264
    order = [ENCODER_OF_FAMILY.get(info.codec), *deep, DEFAULT_CODEC.get(muxer, "libx264")]
    for name in dict.fromkeys(c for c in order if c):
        formats = _encoder_formats(name)
        if (formats is not None and (not formats or pix_fmt in formats) and name in _muxer_codecs(muxer)
                and width >= MIN_WIDTH.get(name, 0)):
            return name
    raise VideoError(f"no encoder here writes {pix_fmt} into a {muxer} file: pass --codec / --pix-fmt")


def _pick_codec(info: VideoInfo, muxer: str, codec: str | None, pix_fmt: str | None, width: int) -> tuple[str, str]:
    av = require_av()
    pix_fmt = pix_fmt or ("yuv420p10le" if info.bits > 8 else "yuv420p")
    try:
        av.video.format.VideoFormat(pix_fmt)
    except (ValueError, TypeError):
        raise VideoError(f"unknown pixel format {pix_fmt!r} (e.g. yuv420p, yuv420p10le, yuv444p)") from None
    if codec:
        _check_requested(codec, muxer, pix_fmt, width)
        return codec, pix_fmt
    return _default_codec(info, muxer, pix_fmt, width), pix_fmt


def _even_size(width: int, height: int, pix_fmt: str) -> tuple[int, int]:
    av = require_av()
    fmt = av.video.format.VideoFormat(pix_fmt)
    fx, fy = 4 // max(1, fmt.chroma_width(4)), 4 // max(1, fmt.chroma_height(4))
    return width - width % fx, height - height % fy


def choose_output(info: VideoInfo, dst: str | Path, scale: int, *, codec: str | None = None,
                  crf: int | None = None, pix_fmt: str | None = None) -> tuple[OutputSettings, list[str]]:
    """Settings to write ``dst`` (its suffix names the container), and notes worth a line to the user."""
    suffix = Path(dst).suffix.lower()
    muxer = CONTAINERS.get(suffix)
    if muxer is None:
        raise VideoError(f"cannot write video as {suffix or 'a file without suffix'}: use "
                         f"{', '.join(sorted(CONTAINERS))}")
    codec, pix_fmt = _pick_codec(info, muxer, codec, pix_fmt, info.width * scale)
    if crf is not None and codec not in DEFAULT_CRF:
        raise VideoError(f"--crf does not apply to {codec} (it applies to {', '.join(DEFAULT_CRF)})")
    crf = DEFAULT_CRF.get(codec) if crf is None else int(crf)
    width, height = _even_size(info.width * scale, info.height * scale, pix_fmt)
    notes = []
    if (width, height) != (info.width * scale, info.height * scale):
        notes.append(f"{pix_fmt} needs even sides: the {info.width * scale}x{info.height * scale} frames "
                     f"are cropped to {width}x{height}")
    segment_muxer = next((m for m in SEGMENT_MUXERS if codec in _muxer_codecs(m)), None)
    if segment_muxer is None:
        raise VideoError(f"{codec} cannot be stored in segment files ({', '.join(SEGMENT_MUXERS)})")
    colour = output_colour(info.colour, info.is_rgb)
    settings = OutputSettings(muxer, codec, pix_fmt, crf, width, height, colour,
                              _codec_options(codec, crf), segment_muxer)
    return settings, notes


class SegmentWriter:
    """Encodes upscaled RGB frames (with their source timestamps) into one segment file."""

    def __init__(self, path: Path, settings: OutputSettings, info: VideoInfo):
        av = require_av()
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only on stderr
        self.settings = settings
        self.path = path
        self.container = av.open(str(path), "w", format=settings.segment_muxer)
        try:
            self.stream = self._add_stream(info)
        except Exception:
            self.abort()
            raise

    def _add_stream(self, info: VideoInfo):
        s = self.settings
        stream = self.container.add_stream(s.codec, rate=info.rate, options=dict(s.options))
        stream.width, stream.height, stream.pix_fmt = s.width, s.height, s.pix_fmt
        stream.time_base = info.time_base
        ctx = stream.codec_context
        ctx.time_base = info.time_base
        ctx.colorspace, ctx.color_range = s.colour.space, s.colour.range
        ctx.color_primaries, ctx.color_trc = s.colour.primaries, s.colour.trc
        if info.sample_aspect_ratio:
            ctx.sample_aspect_ratio = info.sample_aspect_ratio
        return stream

    def write(self, pixels: np.ndarray, pts: int) -> None:
        av = require_av()
        s = self.settings
        frame = rgb_to_frame(pixels[: s.height, : s.width], s.pix_fmt, s.colour)
        frame.pts = pts
        frame.time_base = self.stream.codec_context.time_base
        try:
            self.container.mux(self.stream.encode(frame))
        except av.error.FFmpegError as exc:
            raise VideoError(f"the {s.codec} encoder failed ({ffmpeg_reason(exc)})") from None

    def close(self) -> None:
        av = require_av()
        try:
            self.container.mux(self.stream.encode(None))
            self.container.close()
        except av.error.FFmpegError as exc:
            self.abort()
            raise VideoError(f"the {self.settings.codec} encoder failed ({ffmpeg_reason(exc)})") from None

    def abort(self) -> None:
        try:
            self.container.close()
        except Exception:
            pass
        Path(self.path).unlink(missing_ok=True)
