"""Training: paper recipes from BasicSR-style YAML configs, one CPU to many GPUs, resumable.

>>> from lightsr.train import load_config, train
>>> cfg = load_config("configs/dlgsanet_tiny_x2.yaml", ["train.total_iter=1000"])
>>> exit_code = train(cfg, resume="auto")

See ``docs/training.md`` for the config keys, the run-folder layout and the distributed conventions.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightsr.train.config import Config, ConfigError, load_config, parse_config

__all__ = ["Config", "ConfigError", "load_config", "parse_config", "train"]


def __getattr__(name: str):
    """The config names on first use: importing a submodule (``lightsr.train.distributed``, which
    ``lightsr upscale`` and ``eval`` use) does not load the config parser and PyYAML (about 0.1 s
    of every command's start-up)."""
    if name in ("Config", "ConfigError", "load_config", "parse_config"):
        return getattr(importlib.import_module("lightsr.train.config"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def train(cfg: Config, resume: str | None = None, *, console: bool = True, raise_errors: bool = False) -> int:
    """Train from a validated :class:`Config`; returns the process exit code (0 finished,
    130 / 143 stopped by SIGINT / SIGTERM after writing a checkpoint, 1 non-finite loss or a
    failure - logged to train.log, workers stopped; ``raise_errors=True`` re-raises it instead)."""
    from lightsr.train.trainer import train as _train

    return _train(cfg, resume, console=console, raise_errors=raise_errors)
