"""Temporary .part files: locked while written, removed once their writer is gone (issue 22 item 9)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from lightsr.inference.io import atomic_output
from lightsr.inference.partfiles import PART_PATTERN, part_file, remove_stale_parts

pytest.importorskip("fcntl", reason="part-file locks need POSIX flock")


def _age(path, seconds=3600):
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_stale_parts_are_removed_and_others_kept(tmp_path):
    stale = tmp_path / ".a_x4.png.k2j4h5g6.part"
    stale.write_bytes(b"half an image")
    _age(stale)
    young = tmp_path / ".b_x4.png.abcdefgh.part"
    young.write_bytes(b"just created")
    mine = tmp_path / "notes.part"  # not a name lightsr makes
    mine.write_text("user file")
    _age(mine)
    with part_file(tmp_path / "c_x4.png") as (f, held):  # being written right now, by this process
        f.write(b"x")
        _age(held)
        removed = remove_stale_parts(tmp_path)
        assert removed == [stale] and held.exists()
    assert young.exists() and mine.exists() and not held.exists()


def test_a_part_of_a_killed_writer_is_removed(tmp_path):
    """A process killed with SIGKILL leaves its .part behind; its lock died with it."""
    code = ("import os, sys; from lightsr.inference.io import atomic_output\n"
            "with atomic_output(sys.argv[1]) as f:\n"
            "    f.write(b'partial'); f.flush(); print('writing', flush=True); os.kill(os.getpid(), 9)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out.png")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -9 and "writing" in proc.stdout
    left = [p for p in tmp_path.iterdir()]
    assert len(left) == 1 and PART_PATTERN.match(left[0].name)
    assert remove_stale_parts(tmp_path, min_age_s=0) == left
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_leaves_nothing_and_sets_the_usual_mode(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "a.png") as f:
            f.write(b"data")
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
    assert (tmp_path / "a.png").stat().st_mode & 0o777 == 0o644
