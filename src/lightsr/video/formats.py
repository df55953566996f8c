"""What counts as a video file, and the output defaults that need no FFmpeg to decide.

Pure Python on purpose: ``lightsr upscale`` sorts its inputs into images and videos (and tells
the user how to install the ``video`` extra) without importing PyAV.
"""
from __future__ import annotations

from pathlib import Path

__all__ = [
    "CONTAINERS",
    "DEFAULT_CODEC",
    "DEFAULT_CRF",
    "ENCODER_OF_FAMILY",
    "VIDEO_SUFFIXES",
    "is_video_path",
    "output_suffix",
    "parse_frames",
]

# output file suffix -> FFmpeg muxer name
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
# inputs: any of those, AVI, and GIF when animated
VIDEO_SUFFIXES = frozenset(CONTAINERS) | {".avi", ".gif"}
# inputs whose container is a poor home for a modern codec: the output is written as MP4
_OUTPUT_SUFFIX = {".gif": ".mp4", ".avi": ".mp4"}

# decoder name of the source -> encoder of the same family (the default output codec)
ENCODER_OF_FAMILY = {"h264": "libx264", "hevc": "libx265", "vp9": "libvpx-vp9", "av1": "libsvtav1"}
DEFAULT_CODEC = {"webm": "libvpx-vp9"}  # per container; any other: libx264
# constant-quality defaults, visually near-transparent for each encoder (lower = better, larger)
DEFAULT_CRF = {"libx264": 18, "libx265": 20, "libvpx-vp9": 24, "libsvtav1": 28}


def is_video_path(path: str | Path) -> bool:
    """True for files that ``lightsr upscale`` treats as video: by suffix, GIFs only when animated."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        return False
    if suffix != ".gif":
        return True
    try:
        from PIL import Image

        with Image.open(path) as im:
            return bool(getattr(im, "is_animated", False))
    except Exception:  # unreadable: the image path reports it
        return False


def output_suffix(source: str | Path, container: str | None = None) -> str:
    """The output file suffix: ``container`` (``mp4``, ``mkv``...) or the source's (GIF, AVI -> .mp4)."""
    if container:
        suffix = "." + container.lower().lstrip(".")
        if suffix not in CONTAINERS:
            raise ValueError(f"unknown video container {container!r}; choose one of "
                             f"{', '.join(s[1:] for s in CONTAINERS)}")
        return suffix
    suffix = Path(source).suffix.lower()
    return _OUTPUT_SUFFIX.get(suffix, suffix if suffix in CONTAINERS else ".mp4")


def parse_frames(text: str | None) -> tuple[int, int | None] | None:
    """``"A:B"`` -> (A, B) (frames A to B-1, B omitted: to the end); ``None`` -> None."""
    if text is None:
        return None
    start, sep, stop = str(text).partition(":")
    try:
        a = int(start) if start.strip() else 0
        b = int(stop) if stop.strip() else None
    except ValueError:
        raise ValueError(f"--frames takes A:B (frame numbers, B excluded), not {text!r}") from None
    if not sep or a < 0 or (b is not None and b <= a):
        raise ValueError(f"--frames takes A:B with 0 <= A < B (B excluded, may be omitted), not {text!r}")
    return a, b
