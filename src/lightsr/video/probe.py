"""Reading what a video holds before any work starts: one demux pass, the first frame decoded.

:func:`probe_video` checks everything that can be checked cheaply, so that a bad input fails in a
second with one line (:class:`VideoError`) rather than after an hour of upscaling: a missing or
empty file, a file FFmpeg cannot read (truncated MP4, not a video), no video stream, a codec this
FFmpeg build cannot decode, no frames, a file cut short (its streams end well before the duration
its header declares), frames past the pixel limit. It also lists the timestamp of every frame,
which is what :mod:`lightsr.video.segments` splits and :mod:`lightsr.video.decode` seeks by.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from lightsr.video.colour import Colour, pixel_bits
from lightsr.video.errors import VideoError, ffmpeg_reason, require_av

__all__ = ["VideoInfo", "probe_video"]

# a file is called truncated when its streams end this much before the declared duration
TRUNCATED_SLACK_S = 1.0
TRUNCATED_SLACK_FRACTION = 0.02


@dataclass
class VideoInfo:
    """What :func:`probe_video` found. ``times`` are the frames' timestamps (``time_base`` units)
    in presentation order; frame ``i`` of the clip is the one shown at ``times[i]``."""

    path: Path
    container: str
    codec: str  # the format's name (``av1``), not the decoder's (``libdav1d``)
    width: int
    height: int
    pix_fmt: str
    bits: int
    time_base: Fraction
    times: list[int]
    rate: Fraction  # nominal: the timestamps are what counts
    colour: Colour
    is_rgb: bool
    display_matrix: tuple[int, ...] | None = None
    rotation: int = 0
    sample_aspect_ratio: Fraction | None = None
    stream_index: int = 0
    timestamps: bool = True  # False: the file has none; frames are numbered by decoding order
    other_streams: list[str] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return len(self.times)

    def seconds(self, index: int) -> float:
        """Time of frame ``index`` relative to the first frame."""
        return float((self.times[index] - self.times[0]) * self.time_base)


def _open(path: Path):
    av = require_av()
    if not path.exists():
        raise VideoError("no such file")
    if path.is_dir():
        raise VideoError("is a folder, not a video file")
    if path.stat().st_size == 0:
        raise VideoError("empty file (0 bytes)")
    try:
        return av.open(str(path), metadata_errors="replace")
    except av.error.EOFError:
        raise VideoError("ends before any video data (a zero-length or truncated file)") from None
    except av.error.FFmpegError as exc:
        raise VideoError(f"not a readable video ({ffmpeg_reason(exc)}): a truncated file, or not a video") from None


def _video_stream(container):
    streams = [s for s in container.streams.video if not s.disposition & s.disposition.attached_pic]
    if not streams:
        kinds = sorted({s.type for s in container.streams})
        if not kinds:
            raise VideoError("holds no streams at all (a zero-length clip)")
        raise VideoError(f"has no video stream (it holds: {', '.join(kinds)})")
    stream = streams[0]
    if stream.codec_context is None:
        name = getattr(getattr(stream, "codec", None), "name", None) or "of this stream"
        raise VideoError(f"the video codec {name} cannot be decoded by this FFmpeg build (unknown codec)")
    stream.thread_type = "AUTO"
    return stream


def _display_matrix(frame) -> tuple[tuple[int, ...] | None, int]:
    import struct

    for data in frame.side_data:
        if "DISPLAYMATRIX" in str(data.type):
            matrix = struct.unpack("<9i", bytes(data)[:36])
            return (None, 0) if matrix == (65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30) else (matrix, int(frame.rotation))
    return None, 0


def _scan(container, stream):
    """Demux everything once: (video timestamps, first decoded frame, latest end time in seconds)."""
    av = require_av()
    times, first, end = [], None, 0.0
    missing = False
    try:
        for packet in container.demux():
            if packet.size == 0 or packet.is_discard:
                continue
            ts = packet.pts if packet.pts is not None else packet.dts
            if ts is not None and packet.time_base is not None:
                end = max(end, float((ts + (packet.duration or 0)) * packet.time_base))
            if packet.stream.index != stream.index:
                continue
            missing |= ts is None
            times.append(ts if ts is not None else len(times))
            if first is None:
                frames = stream.decode(packet)
                first = frames[0] if frames else None
        if first is None and times:
            frames = stream.decode(None)
            first = frames[0] if frames else None
    except av.error.FFmpegError as exc:
        where = f"after frame {len(times)}" if times else "at its start"
        raise VideoError(f"corrupt or truncated {where} ({ffmpeg_reason(exc)})") from None
    return times, first, end, missing


def _check_complete(container, times: list[int], end: float) -> None:
    declared = container.duration / 1_000_000 if container.duration else None
    start = container.start_time / 1_000_000 if container.start_time else 0.0
    if declared is None:
        return
    if declared - (end - start) > max(TRUNCATED_SLACK_S, TRUNCATED_SLACK_FRACTION * declared):
        raise VideoError(f"truncated: its streams end at {end - start:.2f} s but it declares {declared:.2f} s "
                         f"({len(times)} frames readable; an interrupted download or recording?)")


def probe_video(path: str | Path, max_pixels: int | None = None) -> VideoInfo:
    """Read ``path``'s video stream (and list the others); :class:`VideoError` when it is unusable."""
    path = Path(path)
    container = _open(path)
    try:
        stream = _video_stream(container)
        times, first, end, missing = _scan(container, stream)
        if not times:
            raise VideoError("has no video frames (zero-length clip)")
        if first is None:
            raise VideoError(f"no frame of its {stream.codec_context.name} video could be decoded (corrupt?)")
        _check_complete(container, times, end)
        info = _info(path, container, stream, first, times, missing)
    finally:
        container.close()
    if max_pixels and info.width * info.height > max_pixels:
        raise VideoError(f"{info.width}x{info.height} frames are past the limit of {max_pixels:,} pixels (--max-pixels)")
    return info


def _frame_rate(stream, times: list[int]) -> Fraction:
    """The nominal frame rate handed to encoders: FFmpeg's average / guessed rate when plausible,
    else the mean rate of the timestamps (e.g. Matroska's 1000 "fps" of its millisecond clock)."""
    measured = None
    if len(times) > 1 and times[-1] > times[0] and stream.time_base:
        measured = Fraction(len(times) - 1) / ((times[-1] - times[0]) * stream.time_base)
        measured = measured.limit_denominator(1001)
    for rate in (stream.average_rate, stream.guessed_rate, measured):
        if rate and 1 <= rate <= 240:
            return Fraction(rate)
    return Fraction(25)


def _info(path, container, stream, first, times, missing) -> VideoInfo:
    matrix, rotation = _display_matrix(first)
    fmt = first.format
    times = list(range(len(times))) if missing else sorted(set(times))
    rate = _frame_rate(stream, times)
    others = [f"#{s.index} {s.type} ({getattr(s.codec_context, 'name', None) or 'unknown codec'})"
              for s in container.streams if s.index != stream.index]
    return VideoInfo(
        path=path, container=container.format.name, codec=stream.codec_context.codec.canonical_name,
        width=first.width, height=first.height, pix_fmt=fmt.name, bits=pixel_bits(fmt.name),
        time_base=1 / Fraction(rate) if missing and rate else stream.time_base, times=times,
        rate=rate, colour=Colour.of(first), is_rgb=bool(fmt.is_rgb) or fmt.name == "pal8",
        display_matrix=matrix, rotation=rotation, sample_aspect_ratio=stream.sample_aspect_ratio,
        stream_index=stream.index, timestamps=not missing, other_streams=others,
    )
