"""Pretrained weights shipped inside the package (safetensors + a model card per file).

Files are named ``<model>_x<scale>.safetensors`` with a model card ``<model>_x<scale>.md``.
:func:`default_weights` returns the shipped file for a model and scale, or ``None``.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_MODEL", "available", "default_weights"]

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = "dlgsanet_tiny"  # provisional; chosen from the CPU trade-off when weights ship


def default_weights(model: str, scale: int) -> Path | None:
    path = HERE / f"{model}_x{int(scale)}.safetensors"
    return path if path.is_file() else None


def available() -> list[tuple[str, int]]:
    out = []
    for p in sorted(HERE.glob("*_x[0-9].safetensors")):
        name, _, scale = p.stem.rpartition("_x")
        out.append((name, int(scale)))
    return out
