"""Progress of a video job: frames done, frames/s and ETA, on a terminal or in a log.

On a terminal a tqdm bar is drawn; without one (a log file, CI, ``nohup``) one line is printed
every ``interval`` seconds and at the end, so a long job is never silent.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

__all__ = ["Progress", "format_eta"]


def format_eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Counts frames; ``callback(done, total)`` is called for each update when given."""

    def __init__(self, total: int, label: str, *, initial: int = 0, enabled: bool = True,
                 stream: TextIO | None = None, interval: float = 10.0,
                 callback: Callable[[int, int], None] | None = None):
        self.total, self.done, self.label = total, initial, label
        self.stream = stream or sys.stderr
        self.interval, self.callback = interval, callback
        self._start, self._start_done = time.monotonic(), initial
        self._last_line = self._start
        self._bar = None
        self.enabled = enabled
        if enabled and _isatty(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=label, unit="frame", file=self.stream,
                             dynamic_ncols=True, leave=False)

    @property
    def rate(self) -> float:
        """Frames per second since this run started (resumed frames excluded)."""
        elapsed = time.monotonic() - self._start
        return (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate
        eta = format_eta((self.total - self.done) / rate) if rate > 0 else "?"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return f"{self.label}: {self.done}/{self.total} frames ({pct:.0f}%), {rate:.2f} frames/s, ETA {eta}"

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.callback is not None:
            self.callback(self.done, self.total)
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.monotonic() - self._last_line >= self.interval:
            self._last_line = time.monotonic()
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self.done > self._start_done:
            print(self.line(), file=self.stream, flush=True)
        self.enabled = False


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
