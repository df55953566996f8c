"""Checkpoints that never lose work.

A run folder ``experiments/<name>/`` holds, for every saved iteration ``N``::

    models/net_g_N.pth              BasicSR checkpoint {"params", "params_ema"} (weights to resume from)
    models/net_g_N.safetensors      the weights to use (EMA when enabled), lightsr metadata
    training_states/N.state         optimiser, EMA decay, RNG states, iteration, data position, best metric

plus ``models/net_g_latest.safetensors`` and ``models/net_g_best.safetensors``. Every file is written
to a temporary name, flushed to disk and renamed (``os.replace``), and the state file is written
last, so a set is *complete* exactly when its ``.state`` exists: a run killed at any instant leaves
either the previous complete set or the new one. Only the newest ``keep`` complete sets are kept.

The state file is lightsr's own: it holds only tensors, numbers, strings, lists and dicts (RNG
states are stored as tensors), so it is read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import logging
import os
import random
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "STATE_FORMAT",
    "CheckpointSet",
    "atomic_torch_save",
    "capture_rng",
    "find_checkpoints",
    "latest_checkpoint",
    "load_state",
    "prune_checkpoints",
    "remove_stale_temp_files",
    "restore_rng",
]

log = logging.getLogger("lightsr.train")

STATE_FORMAT = "lightsr-train-state"
STATE_VERSION = 1
_STATE_RE = re.compile(r"^(\d+)\.state$")
# the temporary names of atomic writes in a run folder: tempfile.mkstemp(prefix=".<name>.", suffix=".tmp")
_TEMP_RE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def atomic_torch_save(obj, path: Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from lightsr.weights import file_mode

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, file_mode())  # mkstemp makes 0600 files
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


# --------------------------------------------------------------------------------------------
# RNG states as tensors (loadable with weights_only=True)
# --------------------------------------------------------------------------------------------


def capture_rng() -> dict:
    """RNG states of python, numpy and torch (CPU and every CUDA device) as tensors and numbers."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    return state


def restore_rng(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------------------------
# finding and pruning checkpoint sets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointSet:
    root: Path
    iteration: int

    @property
    def state(self) -> Path:
        return self.root / "training_states" / f"{self.iteration}.state"

    @property
    def pth(self) -> Path:
        return self.root / "models" / f"net_g_{self.iteration}.pth"

    @property
    def safetensors(self) -> Path:
        return self.root / "models" / f"net_g_{self.iteration}.safetensors"

    def complete(self) -> bool:
        return self.state.is_file() and self.pth.is_file()

    def files(self) -> list[Path]:
        return [self.state, self.pth, self.safetensors]


def find_checkpoints(root: str | os.PathLike) -> list[CheckpointSet]:
    """Complete checkpoint sets under a run folder, oldest first."""
    root = Path(root)
    states = root / "training_states"
    if not states.is_dir():
        return []
    found = []
    for p in states.iterdir():
        m = _STATE_RE.match(p.name)
        if m:
            cs = CheckpointSet(root, int(m.group(1)))
            if cs.complete():
                found.append(cs)
    return sorted(found, key=lambda c: c.iteration)


def latest_checkpoint(root: str | os.PathLike) -> CheckpointSet | None:
    sets = find_checkpoints(root)
    return sets[-1] if sets else None


def prune_checkpoints(root: str | os.PathLike, keep: int) -> list[int]:
    """Delete all but the newest ``keep`` complete sets (``keep=0``: keep everything), and stale temp files."""
    root = Path(root)
    removed = []
    sets = find_checkpoints(root)
    if keep > 0 and len(sets) > keep:
        for cs in sets[:-keep]:
            # the state goes first: an interrupted prune leaves an incomplete (ignored) set, never a
            # state whose weights are gone
            for f in cs.files():
                try:
                    f.unlink()
                except FileNotFoundError:
                    pass
            removed.append(cs.iteration)
    remove_stale_temp_files(root)
    return removed


def remove_stale_temp_files(root: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that a run killed mid-write (SIGKILL, power loss) left behind.

    Only the run folder, ``models/`` and ``training_states/`` are looked at, and only names of the
    form the atomic writers use (``.<file>.<8 random chars>.tmp``). Safe while no other process
    writes into the same run folder, which the trainer assumes anyway.
    """
    root = Path(root)
    removed = []
    for folder in (root, root / "models", root / "training_states"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if _TEMP_RE.match(p.name) and p.is_file():
                try:
                    p.unlink()
                    removed.append(p)
                except FileNotFoundError:
                    pass
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted write: %s", len(removed),
                 ", ".join(str(p.relative_to(root)) for p in removed))
    return removed


def load_state(cs: CheckpointSet) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """``(state, params, params_ema)`` of a checkpoint set, read with ``weights_only=True``."""
    state = torch.load(cs.state, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{cs.state}: not a lightsr training state")
    if state.get("version", 0) > STATE_VERSION:
        raise ValueError(f"{cs.state}: written by a newer lightsr (state version {state['version']})")
    weights = torch.load(cs.pth, map_location="cpu", weights_only=True)
    if not isinstance(weights, dict) or "params" not in weights:
        raise ValueError(f"{cs.pth}: no 'params' entry")
    return state, weights["params"], weights.get("params_ema")
