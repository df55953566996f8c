"""``lightsr.upscale_video``: a video file in, an upscaled video file out, resumable.

>>> import lightsr
>>> lightsr.upscale_video("clip.mp4", "clip_x4.mp4")                 # default model and weights
>>> lightsr.upscale_video("clip.mp4", "part.mkv", frames=(0, 250), codec="libx265", crf=20)
>>> lightsr.upscale_video("clip.mp4", "clip_x4.mp4", resume=True)    # after Ctrl-C / kill

Steps: :func:`~lightsr.video.probe.probe_video` (fails fast on bad input), output settings
(:func:`~lightsr.video.encode.choose_output`), the segment list and its folder beside the output
(:mod:`lightsr.video.segments`), the decode -> upscale -> encode pipeline for the segments not yet
finished (:mod:`lightsr.video.pipeline`), then the final re-mux with audio, subtitles, chapters
and metadata (:mod:`lightsr.video.mux`), written atomically; the segment folder is removed last.
"""
from __future__ import annotations

import contextlib
import hashlib
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lightsr.video.encode import OutputSettings, choose_output
from lightsr.video.errors import VideoError, require_av
from lightsr.video.mux import Trim, assemble
from lightsr.video.pipeline import QUEUE_DEPTH, encode_segments
from lightsr.video.probe import VideoInfo, probe_video
from lightsr.video.segments import SegmentStore, list_segments, segments_for_rank

__all__ = ["DEFAULT_SEGMENT_FRAMES", "VideoResult", "frame_range", "make_upscaler", "upscale_video"]

DEFAULT_SEGMENT_FRAMES = 120


@dataclass
class VideoResult:
    """What one call did. ``path`` is ``None`` for a shard that left the assembly to a later call."""

    path: Path | None
    frames: int  # frames upscaled by this call
    total: int  # frames in the output
    resumed: int  # frames taken from segments finished earlier
    seconds: float  # wall time of the upscaling part
    notes: list[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def frame_range(info: VideoInfo, frames: tuple[int, int | None] | None) -> tuple[int, int]:
    """``frames=(A, B)`` (B excluded, ``None``: the end) -> checked ``(first, stop)``."""
    if frames is None:
        return 0, info.frames
    first, stop = frames
    stop = info.frames if stop is None else min(int(stop), info.frames)
    if not 0 <= first < stop:
        raise VideoError(f"--frames {first}:{frames[1] if frames[1] is not None else ''} selects no frame "
                         f"(the clip has {info.frames})")
    return int(first), stop


def make_upscaler(upscaler=None, model=None, scale=None, weights=None, **options):
    """The given :class:`~lightsr.inference.Upscaler`, or a new one from the model arguments."""
    if upscaler is not None:
        return upscaler
    from lightsr.inference import Upscaler

    return Upscaler(model, scale, weights=weights, **options)


def _weights_digest(model) -> str:
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def _plan(info: VideoInfo, settings: OutputSettings, upscaler, first: int, stop: int, size: int) -> dict:
    stat = info.path.stat()
    return {
        "source": {"path": str(info.path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
        "frames": [first, stop], "segment_frames": size, "output": settings.plan(),
        "model": {"class": type(upscaler.model).__name__, "scale": upscaler.scale,
                  "precision": upscaler.runner.precision, "tile": upscaler.tile,
                  "tile_overlap": upscaler.tile_overlap, "weights_sha256": _weights_digest(upscaler.model)},
    }


def _check_memory(info: VideoInfo, settings: OutputSettings) -> None:
    from lightsr.inference.runner import available_memory

    import torch

    frame = settings.width * settings.height * 3 * (2 if info.bits > 8 else 1)
    need = frame * (2 * QUEUE_DEPTH + 4)  # frames in the queues and in flight, plus the encoder's copy
    free = available_memory(torch.device("cpu"))
    if need > 0.8 * free:
        raise VideoError(f"the {settings.width}x{settings.height} output frames need about {need / 2**30:.1f} GiB "
                         f"in the pipeline but only {free / 2**30:.1f} GiB of memory is free")


@contextlib.contextmanager
def terminate_as_interrupt():
    """Within the block, SIGTERM raises KeyboardInterrupt (same clean-up as Ctrl-C); main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def upscale_video(
    src: str | Path,
    dst: str | Path,
    model=None,
    scale: int | None = None,
    *,
    weights: str | Path | None = None,
    upscaler=None,
    codec: str | None = None,
    crf: int | None = None,
    pix_fmt: str | None = None,
    frames: tuple[int, int | None] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    segment_frames: int = DEFAULT_SEGMENT_FRAMES,
    shard: tuple[int, int] | None = None,
    progress: bool | Callable[[int, int], None] = True,
    max_pixels: int | None = None,
    note: Callable[[str], None] | None = None,
    on_ready: Callable[[], None] | None = None,
    **upscaler_options,
) -> VideoResult:
    """Upscale the video ``src`` into ``dst`` (container from its suffix); see ``docs/video.md``.

    Args:
        model, scale, weights, upscaler_options: as :func:`lightsr.upscale` (or pass a ready
            :class:`~lightsr.inference.Upscaler` as ``upscaler``).
        codec, crf, pix_fmt: output encoder settings (defaults: :mod:`lightsr.video.encode`).
        frames: ``(A, B)`` keeps frames A to B-1 (B ``None``: to the end).
        resume: continue an interrupted job from the segments kept beside ``dst``.
        overwrite: replace an existing ``dst`` (otherwise :class:`FileExistsError`).
        segment_frames: frames per segment (the unit of resuming and of sharing work).
        shard: ``(rank, world_size)``: encode only this rank's segments and return without
            assembling; a later call with ``resume=True`` assembles (see ``docs/video.md``).
        progress: ``True`` (bar on a terminal, periodic lines otherwise), ``False``, or a
            callback ``(done, total)``.
        max_pixels: refuse frames larger than this many pixels.
        note: called with one-line remarks (streams left out, cropping...).
        on_ready: called once the segment folder is prepared, before any segment is encoded
            (``lightsr upscale`` under torchrun: rank 0 prepares the folder before the others
            join it).

    Raises:
        VideoError: bad input or settings (one-line message). FileExistsError: ``dst`` exists.
        KeyboardInterrupt: Ctrl-C or SIGTERM; finished segments are kept for ``resume``.
    """
    require_av()
    src, dst = Path(src), Path(dst)
    notes: list[str] = []

    def say(msg: str) -> None:
        notes.append(msg)
        if note is not None:
            note(msg)

    if dst.resolve() == src.resolve():
        raise VideoError("the output would overwrite the input")
    if dst.exists() and not overwrite and shard is None:
        raise FileExistsError(f"{dst} exists")
    info = probe_video(src, max_pixels)
    first, stop = frame_range(info, frames)
    upscaler = make_upscaler(upscaler, model, scale, weights, **upscaler_options)
    settings, remarks = choose_output(info, dst, upscaler.scale, codec=codec, crf=crf, pix_fmt=pix_fmt)
    for remark in remarks:
        say(remark)
    _check_memory(info, settings)
    segments = list_segments(first, stop, segment_frames)
    store = SegmentStore(dst, settings.segment_suffix)
    dst.parent.mkdir(parents=True, exist_ok=True)
    plan = _plan(info, settings, upscaler, first, stop, segment_frames)
    done = set(store.prepare(plan, segments, resume or shard is not None, clear_temps=shard is None))
    if on_ready is not None:
        on_ready()
    mine = segments_for_rank(segments, *shard) if shard else segments
    todo = [s for s in mine if s not in done]
    seconds = _run(info, todo, store, upscaler, settings, progress, stop - first,
                   sum(s.frames for s in segments if s in done), src.name)
    result = VideoResult(None, sum(s.frames for s in todo), stop - first, sum(s.frames for s in done), seconds, notes)
    if shard is not None:
        return result
    with terminate_as_interrupt():  # SIGTERM while assembling: the partial output is removed too
        assemble(info, settings, store, segments, dst, Trim(info, first, stop), overwrite=overwrite, note=say)
    store.remove()
    result.path = dst
    return result


def _run(info, todo, store, upscaler, settings, progress, total, initial, label) -> float:
    """Encode ``todo`` with progress: a bar on a terminal, else a line every few seconds, with frames/s and ETA
    of this run's frames (segments resumed from an earlier run are counted apart)."""
    from lightsr.inference.progress import Progress

    frames = sum(s.frames for s in todo)
    callback = progress if callable(progress) else None
    bar = Progress(frames, label, unit="frame", enabled=progress is True and frames > 0)
    resumed = f", {initial} resumed" if initial else ""
    t0 = time.perf_counter()

    def on_frame() -> None:
        bar.update()
        bar.set_postfix(f"{bar.done / (time.perf_counter() - t0):.2f} frames/s{resumed}")
        if callback is not None:
            callback(initial + bar.done, total)

    try:
        with terminate_as_interrupt():
            encode_segments(info, todo, store, upscaler, settings, on_frame=on_frame)
    finally:
        bar.close()
    return time.perf_counter() - t0
