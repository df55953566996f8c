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

import contextlib
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
_END = object()  # the decoder has no more frames
_ABORT = object()  # interrupted: keep complete segments, drop the partial one


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
    frames = iter_frames(info, run[0].start, run[-1].stop)
    try:
        for item in frames:
            out.put(item)
        out.put(_END)
    except _Stopped:
        pass
    except BaseException as exc:  # handed to the calling thread
        errors.append(exc)
        out.stop.set()
    finally:
        frames.close()  # closes the file now, not whenever the generator is collected


class _SegmentFiles:
    """The encoder thread's state: the segment being written and the frames it has received."""

    def __init__(self, info: VideoInfo, run: list[Segment], store: SegmentStore, settings: OutputSettings):
        self.info, self.store, self.settings = info, store, settings
        self.pending = iter(run)
        self.end = run[-1].stop
        self.segment: Segment | None = None
        self.writer: SegmentWriter | None = None
        self.last = -1  # index of the last frame written

    def advance_to(self, index: int) -> bool:
        """Commit finished segments until the one holding frame ``index``; False past the run's end."""
        while self.segment is None or index >= self.segment.stop:
            self.commit()
            self.segment = next(self.pending, None)
            if self.segment is None:
                return False
            self.writer = SegmentWriter(self.store.temp_path(self.segment), self.settings, self.info)
        return True

    def write(self, index: int, pts: int, pixels) -> None:
        self.writer.write(pixels, pts)
        self.last = index

    def commit(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.store.commit(self.segment, self.writer.path)
            self.writer = None

    def stop(self) -> None:
        """Interrupted: keep the current segment if all its frames arrived, else delete its file."""
        if self.writer is not None and self.last == self.segment.stop - 1:
            self.commit()
        self.abort()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


def _encode_worker(files: _SegmentFiles, source: _Channel, errors: list) -> None:
    try:
        while True:
            item = source.get()
            if item is _ABORT:
                return files.stop()
            if item is _END:  # commit the last segment (and any left without frames)
                files.advance_to(files.end)
                return
            files.advance_to(item[0])
            files.write(*item)
    except _Stopped:
        pass
    except BaseException as exc:
        errors.append(exc)
        source.stop.set()
    finally:
        files.abort()


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
    """One decoding pass over consecutive segments. On Ctrl-C / an error the decoder stops at once and
    the encoder finishes what is queued (a segment whose frames all arrived is kept); a second Ctrl-C
    while it does so stops it too."""
    stop, abort = threading.Event(), threading.Event()  # stop: decoder and upscaler; abort: encoder
    errors: list[BaseException] = []
    frames, encoded = _Channel(depth, stop), _Channel(depth, abort)
    decoder = threading.Thread(target=_decode_worker, args=(info, run, frames, errors), daemon=True)
    encoder = threading.Thread(target=_encode_worker, args=(_SegmentFiles(info, run, store, settings), encoded, errors),
                               daemon=True)
    decoder.start()
    encoder.start()
    try:
        try:
            _upscale_loop(upscaler, frames, encoded, on_frame)
        except BaseException:
            stop.set()
            with contextlib.suppress(_Stopped):  # the encoder may have stopped already (its error is raised below)
                encoded.put(_ABORT)
            raise
        finally:
            encoder.join()
    except _Stopped:
        pass
    except BaseException:
        stop.set()
        abort.set()
        raise
    finally:
        stop.set()
        abort.set()
        decoder.join(timeout=30)
        encoder.join(timeout=30)
    if errors:
        raise errors[0]


def encode_segments(info: VideoInfo, segments: list[Segment], store: SegmentStore, upscaler,
                    settings: OutputSettings, on_frame: Callable[[], None] = lambda: None,
                    depth: int = QUEUE_DEPTH) -> None:
    """Upscale and encode ``segments`` of ``info``'s clip into ``store``; each is committed when done."""
    for run in runs(segments):
        _encode_run(info, run, store, upscaler, settings, on_frame, depth)
