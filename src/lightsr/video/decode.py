"""Decoding frames ``[start, stop)`` of a clip as RGB arrays, seeking to the nearest keyframe first.

Frames are identified by their timestamps (listed by :func:`lightsr.video.probe.probe_video`), so
a seek that lands on an earlier keyframe just decodes and drops the frames before ``start``; a
demuxer that overshoots (lands after ``start``) is detected and the clip is decoded from its
beginning instead. Files without timestamps are always decoded from the beginning.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from lightsr.video.colour import frame_to_rgb
from lightsr.video.errors import VideoError, ffmpeg_reason, require_av
from lightsr.video.probe import VideoInfo

__all__ = ["iter_frames"]


def _frame_time(frame) -> int | None:
    return frame.pts if frame.pts is not None else frame.dts


def _decode_from(info: VideoInfo, start: int, stop: int, seek: bool) -> Iterator[tuple[int, object]]:
    """(index, frame) for frames ``[start, stop)``; raises ``_Overshoot`` when the seek went too far."""
    av = require_av()
    index_of = {t: i for i, t in enumerate(info.times)} if info.timestamps else None
    container = av.open(str(info.path), metadata_errors="replace")
    try:
        stream = container.streams[info.stream_index]
        stream.thread_type = "AUTO"
        last, first = start - 1, True
        if seek:
            container.seek(info.times[start], stream=stream, backward=True)
        for n, frame in enumerate(container.decode(stream)):
            index = n if index_of is None else index_of.get(_frame_time(frame))
            if index is None:
                continue  # a frame the probe did not list (e.g. the decoder split a field pair)
            if first and seek and index > start:
                raise _Overshoot
            first, last = False, index
            if index >= stop:
                break
            if index >= start:
                yield index, frame
    except av.error.FFmpegError as exc:
        raise VideoError(f"cannot decode frame {last + 1}: {ffmpeg_reason(exc)} (corrupt or truncated?)") from None
    finally:
        container.close()


class _Overshoot(Exception):
    pass


def iter_frames(info: VideoInfo, start: int, stop: int, deep: bool | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(index, timestamp, rgb)`` for frames ``start`` to ``stop - 1`` in order.

    ``rgb`` is (H, W, 3) uint8, or uint16 for sources deeper than 8 bits (``deep`` overrides).
    """
    deep = info.bits > 8 if deep is None else deep
    seek = start > 0 and info.timestamps
    try:
        for index, frame in _decode_from(info, start, stop, seek):
            yield index, info.times[index], frame_to_rgb(frame, deep)
        return
    except _Overshoot:
        pass
    for index, frame in _decode_from(info, start, stop, False):
        yield index, info.times[index], frame_to_rgb(frame, deep)
