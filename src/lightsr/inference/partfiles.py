"""Temporary ``.part`` files of atomic writes and downloads, and removing the ones a killed run left.

An output (or a download) is first written to ``.<name>.<8 random chars>.part`` beside its target
and renamed over it when complete. While it is written, the writing process holds an exclusive
``flock`` on the part file; the lock dies with the process, even on SIGKILL. So a part file whose
lock can be taken belongs to no running process: :func:`remove_stale_parts` deletes exactly those
(never a part another lightsr process is writing right now). Without ``fcntl`` (Windows), only
part files older than a day are removed.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from pathlib import Path
from typing import IO, Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

__all__ = ["PART_PATTERN", "part_file", "remove_stale_parts", "write_text_atomic"]

# the names tempfile.mkstemp(prefix=".<name>.", suffix=".part") makes
PART_PATTERN = re.compile(r"^\..+\.[a-z0-9_]{8}\.part$")
_WINDOWS_STALE_S = 24 * 3600


def _lock(fd: int, blocking: bool) -> bool:
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        return True
    except OSError:
        return False


@contextlib.contextmanager
def part_file(target: str | os.PathLike, mode: int | None = None) -> Iterator[tuple[IO[bytes], Path]]:
    """Create a locked ``.part`` file beside ``target``: yields ``(binary file, path)``.

    The caller writes to the file and renames ``path`` over ``target`` inside the ``with`` block
    (the lock is held until the block ends); the part file is removed on exit if it still exists
    (error, Ctrl-C, or a rename that did not happen)."""
    from lightsr.weights import file_mode

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    path = Path(name)
    f = os.fdopen(fd, "w+b")
    try:
        os.chmod(path, file_mode() if mode is None else mode)  # mkstemp makes 0600 files
        _lock(f.fileno(), blocking=True)
        yield f, path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        f.close()


def remove_stale_parts(folder: str | os.PathLike, min_age_s: float = 10.0) -> list[Path]:
    """Delete the ``.part`` files in ``folder`` that no running process holds (left by SIGKILL,
    power loss, a full disk). Returns the removed paths; a missing folder removes nothing.

    Files younger than ``min_age_s`` are left alone (one may be between its creation and its lock)."""
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not PART_PATTERN.match(entry.name):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            age = time.time() - entry.stat(follow_symlinks=False).st_mtime
            if age < min_age_s:
                continue
            if fcntl is None:  # pragma: no cover
                if age > _WINDOWS_STALE_S:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
                continue
            fd = os.open(entry.path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if _lock(fd, blocking=False):  # nobody writes it: stale
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file beside it, renamed over it; removed if
    anything fails), with the project's file mode."""
    from lightsr.weights import file_mode

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, file_mode())
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
