"""Assembling the output: the segments' video packets plus the source's other streams, re-muxed.

Nothing is re-encoded here. The video packets come from the segment files in order; audio,
subtitle and attachment streams are copied packet by packet from the source (a stream the output
container cannot hold is left out with a note, e.g. SRT subtitles in MP4); the source's metadata,
chapters, stream languages / titles / dispositions and display matrix (rotation) are carried
over. Packets are interleaved by time. With a trim (``--frames A:B``) only the packets that
overlap the kept frames are copied and every stream is shifted so the clip starts where the
source did.

The file is written under a temporary name beside ``dst`` and renamed at the very end, so an
interrupted job never leaves a partial output.
"""
from __future__ import annotations

import heapq
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

from lightsr.video.encode import OutputSettings
from lightsr.video.errors import VideoError, ffmpeg_reason, require_av
from lightsr.video.probe import VideoInfo
from lightsr.video.segments import Segment, SegmentStore

__all__ = ["Trim", "assemble"]

COPIED_TYPES = ("audio", "subtitle", "attachment")
# tags that describe the old file (or its old length), not the content: not carried over
_STALE_TAGS = {"major_brand", "minor_version", "compatible_brands", "encoder", "duration", "bps", "number_of_frames",
               "number_of_bytes", "_statistics_tags", "_statistics_writing_app", "_statistics_writing_date_utc"}


def _tags(metadata: dict) -> dict:
    return {k: v for k, v in metadata.items() if k.lower() not in _STALE_TAGS}


class Trim:
    """The kept time window, in seconds of the source: [start, stop) and the shift applied to it."""

    def __init__(self, info: VideoInfo, first: int, stop: int):
        tb = info.time_base
        self.start = float(info.times[first] * tb)
        self.stop = float(info.times[stop] * tb) if stop < info.frames else float("inf")
        self.shift = float((info.times[first] - info.times[0]) * tb)
        self.trimmed = first > 0 or stop < info.frames

    def keeps(self, start: float, end: float) -> bool:
        return not self.trimmed or (end > self.start and start < self.stop)

    def ticks(self, time_base: Fraction) -> int:
        return int(round(self.shift / time_base)) if self.shift else 0


def _time(packet) -> float:
    ts = packet.dts if packet.dts is not None else packet.pts
    return float(ts * packet.time_base) if ts is not None else 0.0


def _video_packets(store: SegmentStore, segments: list[Segment], stream, shift: int) -> Iterator:
    av = require_av()
    last = None  # decoding timestamps must increase across segment boundaries
    for segment in segments:
        with av.open(str(store.path(segment))) as part:
            for packet in part.demux(part.streams.video[0]):
                if packet.size == 0:
                    continue
                packet.pts = None if packet.pts is None else packet.pts - shift
                packet.dts = None if packet.dts is None else packet.dts - shift
                if last is not None and packet.dts is not None and packet.dts <= last:
                    packet.dts = last + 1
                last = packet.dts
                packet.stream = stream
                yield _time(packet), 0, packet


def _copied_packets(source, mapping: dict, trim: Trim) -> Iterator:
    if not mapping:
        return
    for packet in source.demux(*[source.streams[i] for i in mapping]):
        if packet.size == 0 or packet.pts is None and packet.dts is None:
            continue
        start = _time(packet)
        if not trim.keeps(start, start + float((packet.duration or 0) * packet.time_base)):
            continue
        out, shift = mapping[packet.stream.index]
        packet.pts = None if packet.pts is None else packet.pts - shift
        packet.dts = None if packet.dts is None else packet.dts - shift
        packet.stream = out
        yield _time(packet), 1, packet


def _add_copied_streams(source, output, info: VideoInfo, trim: Trim, note: Callable[[str], None]) -> dict:
    mapping = {}
    for stream in source.streams:
        if stream.index == info.stream_index:
            continue
        codec = getattr(stream.codec_context, "name", None) or stream.metadata.get("filename") or "unknown codec"
        if stream.type not in COPIED_TYPES:
            note(f"stream #{stream.index} ({stream.type}, {codec}) is not copied")
            continue
        try:
            if stream.type == "attachment" and output.format.name != "matroska":
                raise ValueError("attachments (fonts...) exist in Matroska only")
            out = output.add_stream_from_template(stream)
        except (ValueError, TypeError, require_av().error.FFmpegError):
            note(f"stream #{stream.index} ({stream.type}, {codec}) is left out: "
                 f"the {output.format.name} container cannot hold it")
            continue
        out.metadata.update(_tags(stream.metadata))
        out.disposition = stream.disposition
        mapping[stream.index] = (out, trim.ticks(stream.time_base) if stream.time_base else 0)
    return mapping


def _chapters(source, trim: Trim) -> list:
    kept = []
    for ch in source.chapters():
        tb = ch["time_base"] or Fraction(1, 1000)
        start, end = float(ch["start"] * tb), float(ch["end"] * tb)
        if not trim.keeps(start, end):
            continue
        shift = trim.ticks(tb)
        kept.append({**ch, "start": max(0, ch["start"] - shift), "end": max(0, ch["end"] - shift),
                     "metadata": dict(ch["metadata"])})
    return kept


def _video_stream(output, store, segments, info: VideoInfo):
    av = require_av()
    with av.open(str(store.path(segments[0]))) as part:
        # opaque: the template's codec is the segment's decoder (libdav1d for AV1 has no encoder twin)
        stream = output.add_stream_from_template(part.streams.video[0], opaque=True)
    if info.display_matrix is not None:
        stream.set_display_matrix(info.display_matrix)
    return stream


def _write(output_file, settings: OutputSettings, info: VideoInfo, store, segments, trim, note) -> None:
    av = require_av()
    with av.open(str(info.path), metadata_errors="replace") as source, \
            av.open(output_file, "w", format=settings.muxer) as output:
        output.metadata.update(_tags(source.metadata))
        video = _video_stream(output, store, segments, info)
        video.metadata.update({k: v for k, v in source.streams[info.stream_index].metadata.items()
                               if k in ("language", "title", "handler_name")})
        mapping = _add_copied_streams(source, output, info, trim, note)
        chapters = _chapters(source, trim)
        if chapters:
            output.set_chapters(chapters)
        shift = trim.ticks(info.time_base)
        merged = heapq.merge(_video_packets(store, segments, video, shift), _copied_packets(source, mapping, trim),
                             key=lambda item: (item[0], item[1]))
        for _, _, packet in merged:
            output.mux(packet)


def assemble(info: VideoInfo, settings: OutputSettings, store: SegmentStore, segments: list[Segment],
             dst: str | Path, trim: Trim, *, overwrite: bool = False,
             note: Callable[[str], None] = lambda msg: None) -> None:
    """Write ``dst`` atomically from the finished ``segments`` and the source's other streams."""
    from lightsr.inference.io import atomic_output

    av = require_av()
    try:
        with atomic_output(dst, overwrite=overwrite) as f:
            _write(f, settings, info, store, segments, trim, note)
    except av.error.FFmpegError as exc:
        raise VideoError(f"cannot write {Path(dst).name}: {ffmpeg_reason(exc)}") from None
