"""Splitting a job into segments, and the folder beside the output that keeps the finished ones.

A clip's frames ``[start, stop)`` are cut into segments of ``size`` frames by
:func:`list_segments`, a pure function of those three numbers. Each segment is decoded, upscaled
and encoded on its own into its own file (it starts with a keyframe and needs nothing from its
neighbours), so segments can be done in any order, by any process: a killed job resumes from the
segments it finished, and ranks of a distributed job can each take a share
(:func:`segments_for_rank`). The final file is assembled from the segment files by re-muxing,
without re-encoding.

:class:`SegmentStore` is the folder ``.<output name>.lightsr-segments`` beside the output: a
``plan.json`` naming the source and every setting that changes the pixels, and one file per
finished segment, each written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lightsr.video.errors import VideoError

__all__ = ["Segment", "SegmentStore", "list_segments", "segments_for_rank"]

PLAN_VERSION = 1


@dataclass(frozen=True)
class Segment:
    """Frames ``start`` to ``stop - 1`` of the clip; ``index`` numbers segments from 0."""

    index: int
    start: int
    stop: int

    @property
    def frames(self) -> int:
        return self.stop - self.start


def list_segments(start: int, stop: int, size: int) -> list[Segment]:
    """Frames ``[start, stop)`` in consecutive segments of ``size`` frames (the last may be shorter)."""
    if size < 1:
        raise ValueError("segment size must be >= 1 frame")
    if stop <= start:
        return []
    return [Segment(i, a, min(a + size, stop)) for i, a in enumerate(range(start, stop, size))]


def segments_for_rank(segments: list[Segment], rank: int, world_size: int) -> list[Segment]:
    """The share of ``rank`` among ``world_size`` workers (round-robin: balanced, disjoint, complete)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    return segments[rank::world_size]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class SegmentStore:
    """The segment folder of one output file."""

    def __init__(self, dst: str | Path, suffix: str = ".mp4"):
        dst = Path(dst)
        self.folder = dst.parent / f".{dst.name}.lightsr-segments"
        self.suffix = suffix
        self.plan_path = self.folder / "plan.json"

    def path(self, segment: Segment) -> Path:
        return self.folder / f"segment_{segment.index:05d}{self.suffix}"

    def finished(self, segments: list[Segment]) -> list[Segment]:
        return [s for s in segments if self.path(s).is_file()]

    def read_plan(self) -> dict | None:
        try:
            return json.loads(self.plan_path.read_text())
        except (OSError, ValueError):
            return None

    def prepare(self, plan: dict, segments: list[Segment], resume: bool, clear_temps: bool = True) -> list[Segment]:
        """Create or check the folder; returns the segments already finished (to reuse).

        Finished segments are never thrown away silently: without ``resume`` they are an error
        (resume, or delete the folder), and so are segments made with another plan. A folder
        without finished segments is simply reused.
        """
        plan = {"version": PLAN_VERSION, **plan}
        old = self.read_plan() if self.folder.exists() else None
        if old == plan:
            done = self.finished(segments)
            if done and not resume:
                raise VideoError(f"an interrupted run left {len(done)} finished segment(s) in {self.folder}: "
                                 f"add --resume to continue it, or delete that folder to start over")
        elif self._has_segments():
            raise VideoError(f"{self.folder} holds segments of an interrupted run with other settings or another "
                             f"source ({_difference(old, plan)}): delete that folder to start over, or resume "
                             f"with the same settings")
        else:
            done = []
            self.folder.mkdir(parents=True, exist_ok=True)
            self._write_plan(plan)
        if clear_temps:
            self._clear_temps()
        return done

    def _has_segments(self) -> bool:
        return self.folder.is_dir() and any(self.folder.glob("segment_*"))

    def _clear_temps(self) -> None:
        """Remove partial segment files of a killed run (finished ones are never touched)."""
        for tmp in self.folder.glob(".segment_*.part*"):
            tmp.unlink(missing_ok=True)

    def _write_plan(self, plan: dict) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".plan.", dir=self.folder)
        with os.fdopen(fd, "w") as f:
            json.dump(plan, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.plan_path)

    def temp_path(self, segment: Segment) -> Path:
        return self.folder / f".segment_{segment.index:05d}.{os.getpid()}.part{self.suffix}"

    def commit(self, segment: Segment, temp: Path) -> None:
        """Make a completely written segment file final (fsync, then an atomic rename)."""
        with open(temp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temp, self.path(segment))
        _fsync_dir(self.folder)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _difference(old: dict | None, new: dict) -> str:
    if old is None:
        return "no readable plan.json"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "differs in " + ", ".join(keys[:4]) if keys else "same plan"
