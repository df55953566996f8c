"""The video part of ``lightsr upscale``: its options and the step run for each video input.

``lightsr upscale`` (:mod:`lightsr.cli.upscale`) calls :func:`add_video_arguments` on its parser,
:func:`check_video_arguments` once, and for each input where :func:`is_video_path` holds,
:func:`video_output_path` and :func:`upscale_video_file` (under torchrun, every rank calls
:func:`upscale_video_shared` instead: the ranks share the video's segments). Nothing here imports
PyAV: without the ``video`` extra a video input gets one line saying how to install it, and the
batch goes on.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from lightsr.video.formats import CONTAINERS, is_video_path, output_suffix, parse_frames

__all__ = ["VIDEO_EPILOG", "add_video_arguments", "check_video_arguments", "is_video_path",
           "upscale_video_file", "upscale_video_shared", "video_output_path"]

VIDEO_EPILOG = """\
videos (mp4, mkv, mov, webm, avi, animated gif; needs: pip install "lightsr[video]"):
  lightsr upscale clip.mp4 -o out/                          -> out/clip_x4.mp4, audio and subtitles copied
  lightsr upscale clip.mp4 -o out/ --preview 4              4 frames as PNGs + a side-by-side sheet
  lightsr upscale clip.mkv -o out/ --frames 0:250 --codec libx265 --crf 20
  lightsr upscale clip.mp4 -o out/ --resume                 continue after Ctrl-C / a kill
"""


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the video options (a group of their own in ``--help``)."""
    g = parser.add_argument_group("video", 'options for video inputs (needs: pip install "lightsr[video]")')
    g.add_argument("--frames", metavar="A:B", default=None,
                   help="keep frames A to B-1 only (B omitted: to the end); audio and subtitles follow")
    g.add_argument("--preview", type=int, default=None, metavar="N",
                   help="do not write a video: upscale N frames spread over the clip to <name>_preview/ "
                        "(PNGs + a bicubic | lightsr side-by-side sheet)")
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted video from the segments kept beside its output")
    g.add_argument("--codec", default=None, metavar="NAME",
                   help="video encoder (default: the source's family - libx264, libx265, libvpx-vp9, libsvtav1 - "
                        "or the container's usual one)")
    g.add_argument("--crf", type=int, default=None, metavar="N",
                   help="constant quality (default: libx264 18, libx265 20, libvpx-vp9 24, libsvtav1 28)")
    g.add_argument("--pix-fmt", default=None, metavar="FMT",
                   help="output pixel format (default yuv420p; yuv420p10le for sources deeper than 8 bits)")
    g.add_argument("--container", default=None, choices=sorted(s[1:] for s in CONTAINERS),
                   help="output container (default: the input's; GIF and AVI become mp4)")
    g.add_argument("--segment-frames", type=int, default=None, metavar="N",
                   help="frames per segment, the unit of --resume (default 120)")


def check_video_arguments(args) -> str | None:
    """A usage error in the video options (one line), or None."""
    try:
        parse_frames(args.frames)
    except ValueError as exc:
        return str(exc)
    if args.preview is not None and args.preview < 1:
        return "--preview needs at least 1 frame"
    if args.segment_frames is not None and args.segment_frames < 1:
        return "--segment-frames must be >= 1"
    if args.crf is not None and args.crf < 0:
        return "--crf must be >= 0"
    return None


def video_output_path(outdir: Path, rel: Path, suffix: str, args) -> Path:
    """Where a video input goes: ``<stem><suffix>.<container>``, or the ``<stem><suffix>_preview`` folder."""
    stem = f"{Path(rel).stem}{suffix}"
    if args.preview:
        return Path(outdir) / Path(rel).parent / f"{stem}_preview"
    return Path(outdir) / Path(rel).parent / f"{stem}{output_suffix(rel, args.container)}"


def _stderr(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)


def _stdout(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stdout)


def upscale_video_file(src: Path, out_path: Path, args, upscaler, *,
                       say: Callable[[str], None] = _stdout, err: Callable[[str], None] = _stderr,
                       shard: tuple[int, int] | None = None, on_ready: Callable[[], None] | None = None) -> bool:
    """Upscale (or preview) one video; False after one ``error:`` line. Ctrl-C / SIGTERM propagate.

    ``shard=(rank, world_size)``: encode only that share of the segments, silently, and leave the
    assembly to a later call with ``--resume`` (:func:`upscale_video_shared`); ``on_ready`` is
    passed to :func:`lightsr.video.upscale_video`."""
    return _attempt(src, out_path, args, upscaler, say, err, shard=shard, on_ready=on_ready)[0]


def _attempt(src, out_path, args, upscaler, say, err, **video_kw) -> tuple[bool, object]:
    """``(ok, the VideoResult or None)`` of one call; every problem is one line through ``err``."""
    from lightsr.video.errors import VideoError
    from lightsr.video.segments import SegmentStore

    src, out_path = Path(src), Path(out_path)
    try:
        return True, _upscale_one(src, out_path, args, upscaler, say, err, **video_kw)
    except VideoError as exc:
        err(f"error: {src}: {exc}")  # already one line
    except FileExistsError:
        say(f"skip: {out_path} exists (use --overwrite to replace it)")
        return True, None
    except MemoryError as exc:
        err(f"error: {src}: out of memory ({exc})" if str(exc) else f"error: {src}: out of memory")
    except KeyboardInterrupt:
        folder = SegmentStore(out_path).folder
        if folder.is_dir() and not args.preview:
            err(f"interrupted: the finished segments of {src.name} are kept in {folder}; "
                f"run the same command with --resume to continue")
        raise
    except Exception as exc:  # one line per file; the traceback only under --debug
        from lightsr.cli.errors import debug_enabled

        if debug_enabled() or getattr(args, "debug", False):
            traceback.print_exc()
        err(f"error: {src}: {_reason(exc)}")
    return False, None


def upscale_video_shared(src: Path, out_path: Path, args, upscaler, job, *,
                         say: Callable[[str], None] = _stdout, err: Callable[[str], None] = _stderr) -> bool:
    """One video upscaled by every process of a torchrun job (:class:`lightsr.parallel.Job`).

    Every rank calls this for the same videos in the same order. Rank 0 prepares the segment
    folder, then all ranks encode their share of the segments (:func:`segments_for_rank`); if all
    succeeded, rank 0 assembles the output (the ``--resume`` path). Problems are gathered and
    printed once, by rank 0; on other ranks the return value is always True (rank 0 speaks for
    the video). Finished segments of a failed or interrupted job stay for ``--resume``."""
    t0 = time.perf_counter()
    lines: list[str] = []
    released = []

    def release() -> None:  # rank 0, once its folder is ready (or it failed before): the others may start
        if not released:
            released.append(True)
            job.barrier()

    if not job.is_main:
        job.barrier()
    share = argparse.Namespace(**{**vars(args), "quiet": args.quiet or not job.is_main})
    ok, part = _attempt(src, out_path, share, upscaler, say, lines.append, shard=(job.rank, job.world_size),
                        on_ready=release if job.is_main else None)
    if job.is_main:
        release()
    failed = job.any(not ok)
    frames = job.gather_object(part.frames if part is not None else 0)
    everyone = job.gather_object(lines)
    if not job.is_main:
        return True
    printed = dict.fromkeys(line for rank_lines in everyone for line in rank_lines)
    for line in printed:
        err(line)  # the same problem or note seen by every rank (e.g. an unreadable file) is one line
    if failed:
        return False
    final = argparse.Namespace(**{**vars(args), "resume": True, "quiet": True})
    ok, result = _attempt(src, out_path, final, upscaler, say, lambda line: line in printed or err(line))
    if ok and result is not None and not args.quiet:
        say(f"{src} -> {out_path} ({result.total} frames, {sum(frames)} upscaled by {job.world_size} processes "
            f"({' + '.join(map(str, frames))}), {time.perf_counter() - t0:.1f} s)")
    return ok


def _reason(exc: BaseException) -> str:
    """One line for an unexpected failure, worded as for images (``lightsr upscale``)."""
    from lightsr.cli.errors import one_line

    if isinstance(exc, RuntimeError):
        return f"the model failed: {one_line(exc)}"
    if isinstance(exc, OSError):
        return exc.strerror or one_line(exc)
    return f"{type(exc).__name__}: {one_line(exc)}"


def _upscale_one(src: Path, out_path: Path, args, upscaler, say, err, shard=None, on_ready=None):
    from lightsr.inference.io import DEFAULT_MAX_PIXELS
    from lightsr.video import preview_video, upscale_video
    from lightsr.video.api import DEFAULT_SEGMENT_FRAMES

    max_pixels = int(args.max_pixels) if getattr(args, "max_pixels", None) else DEFAULT_MAX_PIXELS
    frames = parse_frames(args.frames)
    quiet = getattr(args, "quiet", False)
    t0 = time.perf_counter()
    if args.preview:
        paths = preview_video(src, out_path, args.preview, upscaler=upscaler, frames=frames,
                              overwrite=getattr(args, "overwrite", False), max_pixels=max_pixels)
        if not quiet:
            say(f"{src} -> {out_path}/ ({len(paths) - 1} frames, side by side: {paths[-1].name}, "
                f"{time.perf_counter() - t0:.1f} s)")
        return None
    result = upscale_video(
        src, out_path, upscaler=upscaler, codec=args.codec, crf=args.crf, pix_fmt=args.pix_fmt, frames=frames,
        resume=args.resume, overwrite=getattr(args, "overwrite", False),
        segment_frames=args.segment_frames or DEFAULT_SEGMENT_FRAMES, progress=not quiet,
        max_pixels=max_pixels, note=lambda msg: err(f"note: {src}: {msg}"), shard=shard, on_ready=on_ready,
    )
    if not quiet and shard is None:
        resumed = f", {result.resumed} resumed" if result.resumed else ""
        say(f"{src} -> {out_path} ({result.total} frames{resumed}, {result.fps:.2f} frames/s, "
            f"{time.perf_counter() - t0:.1f} s)")
    return result
