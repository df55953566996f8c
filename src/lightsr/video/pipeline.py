"""Decode -> upscale -> encode as a pipeline of three threads joined by small bounded queues.

The decoder thread turns frames into RGB arrays (FFmpeg's converters release the GIL), the
calling thread upscales them with :class:`lightsr.inference.Upscaler` (tiling and precision as
for images), the encoder thread converts them back and encodes them. With ``depth`` frames per
queue at most about ``2 * depth + 3`` frames are alive at once, whatever the clip's length.

Each segment goes into a temporary file that is renamed only once it is complete
(:meth:`SegmentStore.commit`); on an error or Ctrl-C the workers stop and the unfinished
segment's file is deleted, so the store only ever holds finished segments.
"""
from __future__ import annotations

import queue
import threading
from itertools import groupby
from typing import Callable

from lightsr.video.decode import iter_frames
from lightsr.video.encode import OutputSettings, SegmentWriter
from lightsr.video.probe import VideoInfo
from lightsr.video.segments import Segment, SegmentStore

__all__ = ["encode_segments", "runs"]

QUEUE_DEPTH = 2
_END = object()


class _Stopped(Exception):
    """The pipeline was stopped (an error elsewhere, or Ctrl-C)."""


class _Channel:
    """A bounded queue whose put/get give up as soon as the shared stop flag is set."""

    def __init__(self, depth: int, stop: threading.Event):
        self.queue: queue.Queue = queue.Queue(depth)
        self.stop = stop

    def put(self, item) -> None:
        while not self.stop.is_set():
            try:
                return self.queue.put(item, timeout=0.1)
            except queue.Full:
                pass
        raise _Stopped

    def get(self):
        while not self.stop.is_set():
            try:
                return self.queue.get(timeout=0.1)
            except queue.Empty:
                pass
        raise _Stopped


def runs(segments: list[Segment]) -> list[list[Segment]]:
    """Split segments (sorted by index) into runs of consecutive ones: each run is decoded in one pass."""
    ordered = sorted(segments, key=lambda s: s.index)
    return [[s for _, s in group] for _, group in groupby(enumerate(ordered), key=lambda p: p[1].index - p[0])]


def _decode_worker(info: VideoInfo, run: list[Segment], out: _Channel, errors: list) -> None:
    try:
        for item in iter_frames(info, run[0].start, run[-1].stop):
            out.put(item)
        out.put(_END)
    except _Stopped:
        pass
    except BaseException as exc:  # handed to the calling thread
        errors.append(exc)
        out.stop.set()


def _encode_worker(info: VideoInfo, run: list[Segment], store: SegmentStore, settings: OutputSettings,
                   source: _Channel, errors: list) -> None:
    pending = iter(run)
    segment, writer = None, None
    try:
        while True:
            item = source.get()
            index = run[-1].stop if item is _END else item[0]
            while segment is None or index >= segment.stop:
                if writer is not None:
                    writer.close()
                    store.commit(segment, writer.path)
                    writer = None
                segment = next(pending, None)
                if segment is None:
                    return
                writer = SegmentWriter(store.temp_path(segment), settings, info)
            writer.write(item[2], item[1])
    except _Stopped:
        pass
    except BaseException as exc:
        errors.append(exc)
        source.stop.set()
    finally:
        if writer is not None and (errors or source.stop.is_set()):
            writer.abort()


def _upscale_loop(upscaler, frames: _Channel, encoded: _Channel, on_frame: Callable[[], None]) -> None:
    while True:
        item = frames.get()
        if item is _END:
            encoded.put(_END)
            return
        index, pts, pixels = item
        encoded.put((index, pts, upscaler.upscale_pixels(pixels)))
        on_frame()


def _encode_run(info, run, store, upscaler, settings, on_frame, depth: int) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []
    frames, encoded = _Channel(depth, stop), _Channel(depth, stop)
    workers = [threading.Thread(target=_decode_worker, args=(info, run, frames, errors), daemon=True),
               threading.Thread(target=_encode_worker, args=(info, run, store, settings, encoded, errors),
                                daemon=True)]
    for w in workers:
        w.start()
    try:
        _upscale_loop(upscaler, frames, encoded, on_frame)
        workers[1].join()
    except _Stopped:
        pass
    except BaseException:
        stop.set()
        raise
    finally:
        for w in workers:
            w.join(timeout=30)
    if errors:
        raise errors[0]


def encode_segments(info: VideoInfo, segments: list[Segment], store: SegmentStore, upscaler,
                    settings: OutputSettings, on_frame: Callable[[], None] = lambda: None,
                    depth: int = QUEUE_DEPTH) -> None:
    """Upscale and encode ``segments`` of ``info``'s clip into ``store``; each is committed when done."""
    for run in runs(segments):
        _encode_run(info, run, store, upscaler, settings, on_frame, depth)
