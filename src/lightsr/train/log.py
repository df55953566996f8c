"""Run logs: a text log, CSV tables (loss and validation), optional TensorBoard.

``train_log.csv`` has one row per ``logger.print_freq`` iterations (mean loss of the window, learning
rate, speed); ``val_log.csv`` one row per validation and dataset. Rows are flushed as they are
written; when a run resumes from iteration ``N`` the rows after ``N`` (written after the checkpoint
it resumes from) are dropped, so the tables always describe one consistent history.
"""
from __future__ import annotations

import csv
import logging
import os
import sys
import tempfile
from pathlib import Path

__all__ = ["CSVLog", "TensorBoard", "format_duration", "setup_logging"]

log = logging.getLogger("lightsr.train")


def setup_logging(run_dir: Path | None, is_main: bool, console: bool = True) -> logging.Logger:
    """``lightsr.train`` logger: INFO to the console and ``run_dir/train.log`` on rank 0, warnings elsewhere."""
    logger = logging.getLogger("lightsr.train")
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    if console:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        logger.addHandler(sh)
    if run_dir is not None and is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger


class CSVLog:
    """Append-only CSV table keyed by an ``iter`` column."""

    def __init__(self, path: Path, fields: list[str]):
        self.path = Path(path)
        self.fields = list(fields)
        self._f = None
        self._writer = None

    def truncate_after(self, iteration: int) -> None:
        """Drop rows with ``iter > iteration`` (rewritten atomically)."""
        if not self.path.is_file():
            return
        with open(self.path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            old_fields = reader.fieldnames or self.fields
            rows = [r for r in reader if r.get("iter", "").isdigit() and int(r["iter"]) <= iteration]
        fields = old_fields if set(old_fields) >= set(self.fields) else self.fields
        from lightsr.weights import file_mode

        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            os.chmod(tmp, file_mode())
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.fields = list(fields)

    def write(self, row: dict) -> None:
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.is_file() or self.path.stat().st_size == 0
            self._f = open(self.path, "a", newline="", encoding="utf-8")
            self._writer = csv.DictWriter(self._f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                self._writer.writeheader()
        self._writer.writerow({k: _fmt(v) for k, v in row.items()})
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) < 1e-3 or abs(v) >= 1e5 else f"{v:.6f}".rstrip("0").rstrip(".")
    return v


class TensorBoard:
    """Thin wrapper over ``torch.utils.tensorboard.SummaryWriter`` (needs the ``tensorboard`` package)."""

    def __init__(self, log_dir: Path, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RuntimeError(
                "logger.use_tb_logger needs the tensorboard package: pip install 'lightsr[tensorboard]'"
            ) from None
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def format_duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    if d:
        return f"{d}d{h:02d}h{m:02d}m"
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{s:02d}s"
