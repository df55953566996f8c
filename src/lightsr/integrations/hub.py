"""What a lightsr model declares to model loaders and model databases (spandrel, OpenModelDB).

No third-party import here: :mod:`lightsr.integrations.spandrel` and ``benchmarks/model_card.py``
(OpenModelDB metadata) both read these facts.

* :data:`FAMILIES`: architecture display names and the ids used for them.
* ``Family.half`` / ``Family.bfloat16``: whether a model runs with its weights cast to float16 / bfloat16.
  Measured, not assumed: on the CPU, every model family with its weights cast (as spandrel's
  ``.half()`` / ``.bfloat16()`` do) gives finite outputs close to float32
  (``tests/integrations/test_hub.py`` asserts it); on an H200 the shipped weights under fp16 / bf16
  autocast gave fp32's Set5 PSNR within 0.02 dB and every fast op stayed within its fp16 / bf16
  bound (docs/gpu.md).
* ``Family.tiling``: from the seam measurements of docs/upscale.md (64-pixel tiles vs the whole
  image): LAMNet within one 8-bit level, trained LGUN within one level, DLGSANet up to 29 levels
  with trained weights (its global attention sees each tile separately), hence "discouraged".
* :func:`size_tags`: the hyper-parameters that tell variants apart ("48nf", "3ng", "3nb").
* :func:`shipped_options`: the metadata options of lightsr's shipped weights when a state dict *is*
  one of them (tensors identical), for loaders that keep a file's tensors but drop its metadata.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from typing import Mapping

import torch

__all__ = ["FAMILIES", "Family", "shipped_options", "size_tags"]


@dataclass(frozen=True)
class Family:
    display: str  # the papers' spelling, used as spandrel's architecture id
    openmodeldb: str  # OpenModelDB architecture id (lower case, as its data/architectures.json keys)
    tiling: str  # "supported" or "discouraged" (spandrel's ModelTiling names)
    tiling_reason: str
    tag_keys: tuple[tuple[str, str], ...]  # (constructor option, tag suffix)
    half: bool = True  # runs with float16 weights (measured: module doc)
    bfloat16: bool = True  # runs with bfloat16 weights (measured: module doc)


FAMILIES: dict[str, Family] = {
    "dlgsanet": Family(
        "DLGSANet", "dlgsanet", "discouraged",
        "sparse global channel attention in every HDTB: 64-px tiles moved 17.8% of the shipped x4 "
        "weights' output pixels by more than one 8-bit level (docs/upscale.md)",
        (("dim", "nf"), ("groups", "ng"), ("blocks", "nb")),
    ),
    "lamnet": Family(
        "LAMNet", "lamnet", "supported",
        "IEM global means barely move the output: 64-px tiles agree within one 8-bit level (docs/upscale.md)",
        (("dim", "nf"), ("num_groups", "ng"), ("num_blocks", "nb")),
    ),
    "lgun": Family(
        "LGUN", "lgun", "supported",
        "trained weights: 64-px tiles agree within one 8-bit level, 56.1 dB (docs/upscale.md)",
        (("dim", "nf"), ("num_blocks", "nb")),
    ),
}


def _settings(name: str, options: Mapping[str, object]) -> dict:
    """Every constructor setting of model ``name`` with ``options``: signature defaults < variant < options."""
    from lightsr.models import get_spec

    spec = get_spec(name)
    params = inspect.signature(spec.builder).parameters
    base = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    return {**base, **spec.defaults, **options}


def size_tags(name: str, options: Mapping[str, object] | None = None) -> list[str]:
    """Tags naming the size of a model, e.g. ``["48nf", "3ng", "3nb"]`` for ``dlgsanet_tiny``."""
    from lightsr.models import get_spec

    family = FAMILIES[get_spec(name).family]
    settings = _settings(name, options or {})
    return [f"{settings[key]}{suffix}" for key, suffix in family.tag_keys]


def shipped_options(name: str, scale: int, state_dict: Mapping[str, torch.Tensor]) -> dict | None:
    """The metadata options of the shipped ``<name>_x<scale>`` weights if ``state_dict`` holds exactly
    their tensors (same keys, shapes and values), else None."""
    from lightsr.pretrained import default_weights
    from lightsr.weights import read_checkpoint

    path = default_weights(name, scale)
    if path is None:
        return None
    shipped, meta = read_checkpoint(path)
    if shipped.keys() != state_dict.keys():
        return None
    for key, tensor in shipped.items():
        other = state_dict[key]
        if other.shape != tensor.shape or not torch.equal(other.detach().to("cpu", tensor.dtype), tensor):
            return None
    return json.loads(meta.get("options", "{}"))
