"""YUV <-> RGB as FFmpeg does it: the stream's matrix and range, converted by FFmpeg's swscale.

A frame's tags (``colorspace``, ``color_range``, ``color_primaries``, ``color_trc``) are read and
handed to swscale, so the RGB the model sees is what ``ffmpeg -i clip.mp4 frame.png`` writes:
BT.601 / BT.709 / BT.2020 matrices, limited (``tv``) or full (``pc``) range, and FFmpeg's own
rule for an untagged stream (BT.601, limited range). The transfer function and primaries are
not converted: the model works on the coded (gamma-encoded) values, as it does on images, and
the output carries the source's tags.

Bit depth: sources of more than 8 bits per sample are converted to 16-bit RGB (``rgb48le``),
upscaled as 16-bit images and converted back to the output's pixel format (10-bit by default).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Colour", "frame_to_rgb", "output_colour", "rgb_to_frame", "pixel_bits"]

# FFmpeg's AVColorSpace / AVColorRange values used below
SPC_RGB, SPC_BT709, SPC_UNSPECIFIED, SPC_BT470BG, SPC_SMPTE170M = 0, 1, 2, 5, 6
RANGE_UNSPECIFIED, RANGE_MPEG, RANGE_JPEG = 0, 1, 2
# AVColorSpace -> swscale's matrix name (absent: swscale's default, BT.601)
_SWS_MATRIX = {1: "itu709", 4: "fcc", 5: "itu601", 6: "itu601", 7: "smpte240m", 9: "bt2020", 10: "bt2020"}
_SPACE_NAMES = {0: "rgb", 1: "bt709", 2: "unknown", 4: "fcc", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m",
                9: "bt2020nc", 10: "bt2020c"}


@dataclass(frozen=True)
class Colour:
    """A stream's colour tags, as FFmpeg's integer enums (0 / 2 = unspecified)."""

    space: int = SPC_UNSPECIFIED
    range: int = RANGE_UNSPECIFIED
    primaries: int = 2
    trc: int = 2

    @classmethod
    def of(cls, frame) -> "Colour":
        return cls(int(frame.colorspace), int(frame.color_range), int(frame.color_primaries), int(frame.color_trc))

    def describe(self) -> str:
        rng = {RANGE_MPEG: "tv", RANGE_JPEG: "pc"}.get(self.range, "unknown")
        return f"{_SPACE_NAMES.get(self.space, self.space)}/{rng}"


def pixel_bits(pix_fmt: str) -> int:
    """Largest bits per sample of a pixel format (8 for yuv420p, 10 for yuv420p10le)."""
    import av

    try:
        fmt = av.video.format.VideoFormat(pix_fmt)
    except (ValueError, TypeError):
        return 8
    return max((c.bits for c in fmt.components), default=8)


def _interpolation():
    from av.video.reformatter import Interpolation

    return Interpolation.BICUBIC | Interpolation.ACCURATE_RND  # ffmpeg's default scaler, exact rounding


def frame_to_rgb(frame, deep: bool) -> np.ndarray:
    """A decoded frame -> (H, W, 3) RGB, uint8 (``deep=False``) or uint16 over the full 16 bits."""
    colour = Colour.of(frame)
    rgb = frame.reformat(
        format="rgb48le" if deep else "rgb24",
        src_colorspace=_SWS_MATRIX.get(colour.space),
        src_color_range=colour.range or None,
        interpolation=_interpolation(),
    )
    return rgb.to_ndarray()


def output_colour(source: Colour, is_rgb_source: bool) -> Colour:
    """The tags the output is encoded with (YUV output).

    The source's, made explicit where FFmpeg would have guessed: an untagged matrix was decoded
    as BT.601 and an untagged range as limited, so the output says so (players otherwise guess
    BT.709 for the now high-definition frames). RGB sources (GIF, PNG/FFV1 RGB) get BT.709.
    """
    space, rng = source.space, source.range
    if is_rgb_source or space == SPC_RGB:
        space, rng = SPC_BT709, RANGE_MPEG
    elif space not in _SWS_MATRIX:
        space = SPC_SMPTE170M
    return Colour(space, rng or RANGE_MPEG, source.primaries, source.trc)


def rgb_to_frame(pixels: np.ndarray, pix_fmt: str, colour: Colour):
    """(H, W, 3) uint8 / uint16 RGB -> a frame of ``pix_fmt`` with ``colour``'s matrix, range and tags."""
    import av

    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels),
                                       format="rgb48le" if pixels.dtype == np.uint16 else "rgb24")
    if av.video.format.VideoFormat(pix_fmt).is_rgb:
        out = frame.reformat(format=pix_fmt, interpolation=_interpolation())
    else:
        out = frame.reformat(format=pix_fmt, dst_colorspace=_SWS_MATRIX.get(colour.space, "itu601"),
                             dst_color_range=colour.range or RANGE_MPEG, interpolation=_interpolation())
        out.colorspace = colour.space
        out.color_range = colour.range or RANGE_MPEG
    out.color_primaries = colour.primaries
    out.color_trc = colour.trc
    return out
