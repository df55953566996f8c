"""One error path for every ``lightsr`` command.

Every failure a user can cause ends as **one line** on stderr that names the file and the reason,
and a documented exit code; a traceback appears only under ``--debug`` (or ``LIGHTSR_DEBUG=1``).

Exit codes (all commands):

* ``0`` success;
* ``1`` the work failed or part of it did (an image, a set, a training run);
* ``2`` the command could not start: bad arguments, unknown model, unusable weights or config;
* ``130`` interrupted (Ctrl-C); ``lightsr train`` also uses ``143`` (SIGTERM) - see its help.
"""
from __future__ import annotations

import os
import re
import sys
import traceback

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "UsageError",
    "debug_enabled",
    "one_line",
    "print_error",
    "report",
    "user_errors",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
MAX_MESSAGE = 400  # characters of one error line (longer messages end at a word with "...")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

_debug = False


class UsageError(Exception):
    """A bad command line (one-line message; exit code 2)."""


def set_debug(on: bool) -> None:
    global _debug
    _debug = bool(on)


def debug_enabled() -> bool:
    return _debug or os.environ.get("LIGHTSR_DEBUG", "") not in ("", "0")


def one_line(exc: BaseException | str, limit: int = MAX_MESSAGE) -> str:
    """A message as one clean line: no ANSI codes or control characters, whitespace collapsed,
    at most ``limit`` characters (cut at a word, never inside one)."""
    text = exc if isinstance(exc, str) else str(exc)
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]  # str(KeyError) adds quotes
    text = _CONTROL.sub(" ", _ANSI.sub("", text))
    text = " ".join(text.split())
    if not text:
        text = type(exc).__name__ if not isinstance(exc, str) else "unknown error"
    if len(text) > limit:
        cut = text[: limit - 4].rsplit(" ", 1)[0].rstrip(",;:")
        text = cut + " ..."
    return text


def user_errors() -> tuple[type[BaseException], ...]:
    """lightsr's own error types: what a user's input can cause (never a bug)."""
    from lightsr.inference.io import ImageError
    from lightsr.inference.runner import NonFiniteOutput
    from lightsr.inference.upscaler import WeightsMissing
    from lightsr.models.registry import UnknownModel
    from lightsr.pretrained import DownloadError
    from lightsr.weights import CheckpointError

    found: list[type[BaseException]] = [CheckpointError, ImageError, NonFiniteOutput, WeightsMissing,
                                        UnknownModel, DownloadError, UsageError]
    for module, name in (("lightsr.train.config", "ConfigError"), ("lightsr.train.trainer", "TrainingError"),
                         ("lightsr.data.train_dataset", "DataError")):
        try:
            found.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):  # pragma: no cover - optional parts of a build
            pass
    return tuple(found)


# errors that mean "the command could not start" (exit 2); other lightsr errors are failures (exit 1)
_START_ERRORS = ("CheckpointError", "WeightsMissing", "UnknownModel", "DownloadError", "UsageError", "ConfigError",
                 "TrainingError")


def print_error(prog: str, message: str) -> None:
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)


def report(prog: str, exc: BaseException) -> int:
    """Print ``exc`` as one line (a traceback first under ``--debug``) and return the exit code."""
    if debug_enabled():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if isinstance(exc, user_errors()):
        print_error(prog, one_line(exc))
        return EXIT_USAGE if type(exc).__name__ in _START_ERRORS or _is_start_error(exc) else EXIT_FAILED
    if isinstance(exc, MemoryError):
        print_error(prog, f"out of memory{': ' + one_line(exc) if str(exc) else ''}")
        return EXIT_FAILED
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print_error(prog, f"{where}{exc.strerror or one_line(exc)}")
        return EXIT_FAILED
    hint = "" if debug_enabled() else " (this is a bug in lightsr: run again with --debug and report the traceback)"
    print_error(prog, f"internal error: {type(exc).__name__}: {one_line(exc, 240)}{hint}")
    return EXIT_FAILED


def _is_start_error(exc: BaseException) -> bool:
    return any(c.__name__ in _START_ERRORS for c in type(exc).__mro__)
