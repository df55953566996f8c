"""Errors of the video path, and the lazy import of PyAV (the optional ``video`` extra)."""
from __future__ import annotations

__all__ = ["INSTALL_HINT", "VideoError", "ffmpeg_reason", "require_av"]

INSTALL_HINT = 'video needs PyAV (FFmpeg for Python): pip install "lightsr[video]"'


class VideoError(Exception):
    """A video that cannot be read, upscaled or written; ``str(exc)`` is a one-line reason."""


def require_av():
    """Import and return :mod:`av`, or raise :class:`VideoError` saying how to install it."""
    try:
        import av
    except ImportError:
        raise VideoError(INSTALL_HINT) from None
    return av


def ffmpeg_reason(exc: BaseException) -> str:
    """One line from an FFmpeg error: its message without the file name PyAV appends."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).strip().splitlines()[0]
