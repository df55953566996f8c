"""Peer baselines from other papers (IMDN, PAN, ...), registered so that lightsr can evaluate and
compare them next to its own models with their published checkpoints. Each module registers its
models and a checkpoint detector on import; add new modules to ``PEER_MODULES``."""
from __future__ import annotations

import importlib

PEER_MODULES: tuple[str, ...] = ("imdn", "pan")

for _name in PEER_MODULES:
    importlib.import_module(f"{__name__}.{_name}")
