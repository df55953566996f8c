"""Model registry: names -> builders, with variant defaults and checkpoint detectors.

Every model built by :func:`create_model` carries ``model.lightsr_config``
(``{"name", "scale", "options"}``), which is what :func:`lightsr.save_model` writes into the
safetensors metadata so that :func:`lightsr.load_model` can rebuild it from the file alone.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
import torch.nn as nn

__all__ = [
    "ModelSpec",
    "Detection",
    "register_model",
    "register_detector",
    "create_model",
    "list_models",
    "get_spec",
    "count_parameters",
    "detectors",
]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # architecture family: dlgsanet / lamnet / lgun / imdn / pan ...
    builder: Callable[..., nn.Module]  # builder(scale=..., **options)
    defaults: Mapping[str, object] = field(default_factory=dict)  # variant settings
    scales: tuple[int, ...] = (2, 3, 4)
    description: str = ""
    paper: str = ""
    official_params: Mapping[int, int] = field(default_factory=dict)  # scale -> count of the official code
    paper_params: Mapping[int, int] = field(default_factory=dict)  # scale -> count printed in the paper
    peer: bool = False  # a baseline from another paper (not one of lightsr's three architectures)


@dataclass(frozen=True)
class Detection:
    """Result of recognising a state dict: enough to rebuild the model."""

    name: str
    scale: int
    options: dict


_REGISTRY: dict[str, ModelSpec] = {}
_DETECTORS: list[tuple[str, Callable[[Mapping[str, torch.Tensor]], Detection | None]]] = []


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def register_detector(family: str, fn: Callable[[Mapping[str, torch.Tensor]], Detection | None]) -> None:
    """``fn(state_dict)`` returns a :class:`Detection` when the keys belong to ``family``, else None."""
    _DETECTORS.append((family, fn))


def detectors() -> list[tuple[str, Callable]]:
    _ensure_loaded()
    return list(_DETECTORS)


def _ensure_loaded() -> None:
    # the architecture modules register themselves on import
    import lightsr.models.peers  # noqa: F401
    import lightsr.models.zoo  # noqa: F401


def list_models(include_peers: bool = True) -> list[str]:
    _ensure_loaded()
    return [n for n, s in _REGISTRY.items() if include_peers or not s.peer]


def get_spec(name: str) -> ModelSpec:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(_REGISTRY)}") from None


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    raise TypeError(f"option value {value!r} is not JSON-serialisable")


def create_model(name: str, scale: int = 4, **options) -> nn.Module:
    """Build model ``name`` for ``scale`` (x2, x3 or x4), with variant defaults overridden by ``options``.

    >>> m = create_model("dlgsanet_light", scale=4)            # 760,776 parameters
    >>> m = create_model("lamnet", 2, csm="none", iem=False)    # a Table-4 ablation
    """
    spec = get_spec(name)
    scale = int(scale)
    if scale not in spec.scales:
        raise ValueError(f"{name} supports scales {spec.scales}, not {scale}")
    params = inspect.signature(spec.builder).parameters
    unknown = sorted(set(options) - set(params) - {"scale"})
    if unknown:
        valid = ", ".join(p for p in params if p != "scale")
        raise TypeError(f"{name}: unknown option(s) {', '.join(unknown)}; valid options: {valid}")
    kwargs = {**spec.defaults, **options}
    model = spec.builder(scale=scale, **kwargs)
    model.lightsr_config = {"name": name, "scale": scale, "options": _jsonable(dict(options))}
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def options_json(model: nn.Module) -> str:
    return json.dumps(model.lightsr_config["options"], sort_keys=True)
