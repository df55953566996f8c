"""Progress with elapsed time and ETA without a terminal (issue 22 item 9)."""
from __future__ import annotations

import io
import re
import time

from lightsr.inference.progress import Progress, format_bytes, format_duration


def test_plain_lines_without_a_terminal():
    out = io.StringIO()  # not a tty
    with Progress(4, "images", stream=out, interval=0.0) as bar:
        for _ in range(4):
            time.sleep(0.01)
            bar.set_postfix("a.png")
            bar.update()
    lines = out.getvalue().splitlines()
    assert lines and all(line.startswith("images: ") for line in lines)
    assert "4/4 (100%)" in lines[-1] and "elapsed" in lines[-1] and "ETA 0:00" in lines[-1] and "a.png" in lines[-1]
    assert "\r" not in out.getvalue()  # lines, not a bar redrawn in place


def test_lines_are_spaced_by_the_interval():
    out = io.StringIO()
    with Progress(1000, "tiles", stream=out, interval=3600) as bar:
        for _ in range(1000):
            bar.update()
    assert out.getvalue() == ""  # within the interval: quiet (the first line comes after `interval` s)


def test_interval_zero_prints_every_step_however_fast(monkeypatch):
    """CI flake of the compare CLI test: with the old 10 ms floor, steps that all ended within 10 ms printed nothing."""
    monkeypatch.setenv("LIGHTSR_PROGRESS_INTERVAL", "0")
    out = io.StringIO()
    with Progress(3, "models", stream=out) as bar:
        for _ in range(3):
            bar.update()
    lines = out.getvalue().splitlines()
    for k in (1, 2, 3):
        assert any(line.startswith(f"models: {k}/3 (") for line in lines), lines
    assert "3/3 (100%)" in lines[-1] and "elapsed" in lines[-1] and "ETA" in lines[-1]


def test_a_long_single_step_still_reports_with_an_estimated_eta():
    """A whole-image pass reports no tiles: the heartbeat prints elapsed time and the ETA of the estimate."""
    out = io.StringIO()
    with Progress(None, "  big.png", stream=out, interval=0.05, expected_s=100.0):
        time.sleep(0.4)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2
    assert re.fullmatch(r"  big\.png \| 0:00 elapsed \| ETA 1:(39|40) \(estimate\)", lines[-1]), lines[-1]


def test_the_eta_follows_the_steps_done():
    bar = Progress(10, "x", stream=io.StringIO(), interval=3600)
    bar.t0 -= 20.0  # 20 s for 4 of 10 steps -> 30 s left
    bar.set(4)
    assert abs(bar.eta() - 30.0) < 1.0 and "4/10 (40%)" in bar.status() and "ETA 0:30" in bar.status()
    bar.close()


def test_disabled_prints_nothing():
    out = io.StringIO()
    with Progress(3, "images", stream=out, enabled=False, interval=0.0, expected_s=5) as bar:
        bar.update(3)
        time.sleep(0.05)
    assert out.getvalue() == ""


def test_formats():
    assert format_duration(7) == "0:07" and format_duration(3723) == "1:02:03" and format_duration(float("nan")) == "?"
    assert format_bytes(999) == "999 B" and format_bytes(1_500_000) == "1.5 MB"
