"""spandrel support: DLGSANet (tiny / light / full), LAMNet (base / large) and LGUN for chaiNNer,
ComfyUI and anything else that loads models through spandrel.

Importing this module registers the three architectures in spandrel's ``MAIN_REGISTRY``
(:func:`register` does it again, harmlessly, or into another registry)::

    import lightsr.integrations.spandrel          # once, before loading
    from spandrel import ModelLoader
    model = ModelLoader().load_from_file("DLGSANet_light_x4.pth")   # or a lightsr .safetensors
    sr = model(lr)                                 # (1, 3, H, W) in [0, 1] -> (1, 3, 4H, 4W)

Detection and hyper-parameters come from the state dict alone (key names, tensor shapes), through
lightsr's own detectors (:mod:`lightsr.models.zoo`, as ``lightsr.load_model`` uses them); the
model is lightsr's, with its fast operators. Official BasicSR checkpoints (``params`` /
``params_ema``, ``module.`` prefix) and lightsr safetensors files both load. spandrel passes a
safetensors file's tensors but not its metadata, so options that leave no trace in the tensors
(DLGSANet's TLC switch, attention activation) take their defaults, except for lightsr's shipped
weights, recognised by their tensors, whose metadata options apply
(:func:`lightsr.integrations.hub.shipped_options`).
"""
from __future__ import annotations

from typing import Callable, Mapping

try:
    import spandrel
except ModuleNotFoundError as exc:  # one line on how to get it
    if exc.name == "spandrel":
        raise ImportError("lightsr.integrations.spandrel needs spandrel: pip install 'lightsr[spandrel]'") from None
    raise ImportError(f"spandrel is installed but cannot be imported ({exc}); it needs torchvision") from None

import torch

from lightsr.integrations.hub import FAMILIES, shipped_options, size_tags

__all__ = ["ARCHITECTURES", "LightsrArch", "register"]


def _family_detector(family: str) -> Callable[[Mapping[str, torch.Tensor]], object]:
    from lightsr.models.registry import detectors

    return next(fn for fam, fn in detectors() if fam == family)


class LightsrArch(spandrel.Architecture[torch.nn.Module]):
    """One lightsr architecture family (all its variants) as a spandrel ``Architecture``."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._detector = _family_detector(family)
        super().__init__(id=FAMILIES[family].display, detect=self._detects)

    def _detects(self, state_dict: Mapping[str, object]) -> bool:
        try:
            return self._detector(state_dict) is not None
        except (KeyError, ValueError, IndexError, AttributeError, TypeError):
            return False  # the family's keys, but not a loadable layout

    def load(self, state_dict: spandrel.StateDict) -> spandrel.ImageModelDescriptor[torch.nn.Module]:
        from lightsr.models import create_model
        from lightsr.weights import canonical_state_dict

        state_dict = canonical_state_dict(state_dict)
        found = self._detector(state_dict)
        options = {**found.options, **(shipped_options(found.name, found.scale, state_dict) or {})}
        model = create_model(found.name, found.scale, **options)
        channels = int(options.get("in_chans", 3))
        info = FAMILIES[self.family]
        return spandrel.ImageModelDescriptor(
            model.eval(),
            state_dict,
            architecture=self,
            purpose="SR",
            tags=[found.name, *size_tags(found.name, options)],
            supports_half=info.half,
            supports_bfloat16=info.bfloat16,
            scale=found.scale,
            input_channels=channels,
            output_channels=channels,
            size_requirements=spandrel.SizeRequirements(),  # any size: the models pad nothing
            tiling=spandrel.ModelTiling[info.tiling.upper()],
        )


ARCHITECTURES = {family: LightsrArch(family) for family in FAMILIES}


def register(registry: spandrel.ArchRegistry | None = None) -> list[spandrel.ArchSupport]:
    """Add DLGSANet, LAMNet and LGUN to ``registry`` (default: spandrel's ``MAIN_REGISTRY``).

    Idempotent: architectures already there are kept. Returns the entries added.
    """
    registry = spandrel.MAIN_REGISTRY if registry is None else registry
    support = [spandrel.ArchSupport.from_architecture(arch) for arch in ARCHITECTURES.values()]
    return registry.add(*support, ignore_duplicates=True)


register()
