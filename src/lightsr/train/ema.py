"""Exponential moving average of a model's parameters, with BasicSR semantics.

Every iteration, after the optimiser step: ``ema = decay * ema + (1 - decay) * param`` for each
parameter (buffers are not averaged; they are copied from the model when the EMA is created or
loaded, as BasicSR's ``model_ema``). Optional warm-up (not BasicSR): the decay ramps up as
``min(decay, (1 + i) / (10 + i))``. The averaged weights are saved as ``params_ema`` next to
``params`` and are the ones validated and exported.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

__all__ = ["ModelEMA", "unwrap"]


class ModelEMA:
    """A frozen copy of ``model`` whose parameters track an exponential moving average."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.module = copy.deepcopy(unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def decay_at(self, iteration: int) -> float:
        """Decay used after iteration ``iteration`` (1-based): constant, or with warm-up
        ``min(decay, (1 + i) / (10 + i))`` so that short runs are not dominated by the initial weights."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + iteration) / (10.0 + iteration))

    @torch.no_grad()
    def update(self, model: nn.Module, iteration: int = 0) -> None:
        decay = self.decay_at(iteration)
        src = dict(unwrap(model).named_parameters())
        for name, p in self.module.named_parameters():
            p.mul_(decay).add_(src[name].detach(), alpha=1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state, strict=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside ``torch.compile`` / ``DistributedDataParallel`` wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model
