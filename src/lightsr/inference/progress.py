"""Progress of long work with elapsed time and ETA - on a terminal and without one.

On a terminal, :class:`Progress` is a tqdm bar. Without one (a log file, a pipe, CI, ``nohup``)
it prints a plain line at most every ``interval`` seconds::

    images: 3/10 (30%) | 0:42 elapsed | ETA 1:38 | photo.png

and a background thread keeps printing while one step takes long (a whole image in one pass, a
model in ``lightsr compare``), so a run is never silent for minutes; with ``expected_s`` (an
estimate of the step's duration) that line carries an ETA too. A task that printed lines ends
with one more holding its final count. The interval defaults to 5 s
(``LIGHTSR_PROGRESS_INTERVAL``); 0 prints a line at every step, however fast.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO

__all__ = ["Progress", "format_bytes", "format_duration"]

DEFAULT_INTERVAL = 5.0


def format_duration(seconds: float) -> str:
    """``0:07``, ``12:05``, ``1:02:03``; ``?`` for an unknown duration."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("LIGHTSR_PROGRESS_INTERVAL", DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """Count ``total`` steps of ``desc``; a bar on a terminal, plain timed lines otherwise.

    Args:
        total: number of steps (``None``: unknown).
        desc: what is counted (``images``, ``tiles of a.png``, ``downloading w.pth``).
        unit: shown after the counts on a terminal.
        stream: where to write (default stderr).
        enabled: ``False`` prints nothing at all (``--quiet``).
        interval: seconds between plain lines (default 5, ``LIGHTSR_PROGRESS_INTERVAL``; 0: every step).
        expected_s: estimated duration of the whole task, for an ETA before the first step ends.
        bytes: counts are byte sizes (downloads).
        leave: keep the terminal bar when closed.
    """

    def __init__(self, total: int | None, desc: str, *, unit: str = "", stream: TextIO | None = None,
                 enabled: bool = True, interval: float | None = None, expected_s: float | None = None,
                 bytes: bool = False, leave: bool = True):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.interval = _interval() if interval is None else float(interval)
        self.expected_s = expected_s
        self.bytes = bytes
        self.done = 0
        self.postfix = ""
        self.t0 = time.monotonic()
        self._last_line = self.t0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._bar = None
        self._thread = None
        self._tty = enabled and _isatty(self.stream)
        self._lines, self._last_done = 0, None
        self.leave = leave
        if not enabled:
            return
        self._thread = threading.Thread(target=self._heartbeat, name="lightsr-progress", daemon=True)
        self._thread.start()

    def _ensure_bar(self):
        """The terminal bar, created on first use (a step that ends at once never flashes one)."""
        if self._bar is None and self._tty:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.done, desc=self.desc, unit=self.unit or "it",
                             file=self.stream, leave=self.leave, dynamic_ncols=True, unit_scale=self.bytes)
            if self.postfix:
                self._bar.set_postfix_str(self.postfix, refresh=False)
        return self._bar

    # -- counting ------------------------------------------------------------------------------
    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.set(self.done + n, postfix)

    def set(self, done: int, postfix: str | None = None) -> None:
        """Count ``done`` steps; ``postfix`` (e.g. a speed) is set with the count, so no line shows one without the other."""
        if not self.enabled:
            self.done = done
            return
        with self._lock:
            if postfix is not None:
                self.set_postfix(postfix)
            step = done - self.done
            self.done = done
            if self._tty:
                bar = self._ensure_bar()
                if bar.total != self.total:
                    bar.total = self.total
                bar.update(step)
            elif time.monotonic() - self._last_line >= self.interval:
                self._line()

    def set_postfix(self, text: str) -> None:
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def write(self, message: str, stream: TextIO | None = None) -> None:
        """Print a line without breaking the bar."""
        out = stream or sys.stdout
        if self._bar is not None:
            from tqdm import tqdm

            tqdm.write(message, file=out)
        else:
            print(message, file=out, flush=True)

    # -- text ---------------------------------------------------------------------------------
    def eta(self) -> float | None:
        """Seconds left: from the steps done so far, else from ``expected_s``; None if unknown."""
        elapsed = time.monotonic() - self.t0
        if self.total and self.done > 0:
            return elapsed / self.done * max(self.total - self.done, 0)
        if self.expected_s is not None:
            return max(self.expected_s - elapsed, 0.0)
        return None

    def status(self) -> str:
        elapsed = time.monotonic() - self.t0
        count = format_bytes(self.done) if self.bytes else str(self.done)
        if self.total:
            total = format_bytes(self.total) if self.bytes else str(self.total)
            count = f"{count}/{total} ({100 * self.done / self.total:.0f}%)"
        elif not self.done:
            count = ""
        eta = self.eta()
        parts = [f"{self.desc}: {count}" if count else self.desc, f"{format_duration(elapsed)} elapsed"]
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}" + (" (estimate)" if not self.done and self.expected_s else ""))
        if self.postfix:
            parts.append(self.postfix)
        return " | ".join(parts)

    def _line(self) -> None:
        self._last_line = time.monotonic()
        self._lines += 1
        self._last_done = self.done
        try:
            print(self.status(), file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed stream: progress is never worth a crash
            pass

    def _heartbeat(self) -> None:
        tick = max(0.01, min(1.0, self.interval))
        while not self._stop.wait(tick):
            with self._lock:
                if self._tty:
                    if self._bar is None and time.monotonic() - self.t0 < 1.0:
                        continue
                    self._ensure_bar()
                    eta = self.eta()
                    if eta is not None and not self.done:
                        self._bar.set_postfix_str(f"about {format_duration(eta)} left", refresh=False)
                    self._bar.refresh()
                elif time.monotonic() - self._last_line >= self.interval:
                    self._line()

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            if not self._tty and self._lines and self._last_done != self.done:
                self._line()  # a long task's log ends with its final count
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
