"""Exponential moving average of a model's parameters, with BasicSR semantics.

Every iteration, after the optimiser step: ``ema = decay * ema + (1 - decay) * param`` for each
parameter (buffers are not averaged; they are copied from the model when the EMA is created or
loaded, as BasicSR's ``model_ema``). Optional warm-up (not BasicSR): the decay ramps up as
``min(decay, (1 + i) / (10 + i))``. The averaged weights are saved as ``params_ema`` next to
``params`` and are the ones validated and exported.

On CUDA the update is one ``torch._foreach_lerp_`` over all parameters (a few kernel launches
instead of two per parameter: ~500 for dlgsanet_tiny, as many as a whole graphed training step);
``ema + (1 - decay) * (param - ema)`` equals the per-parameter formula up to float rounding. On the
CPU the per-parameter ``mul_`` / ``add_`` of BasicSR stays (bit for bit as before).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

__all__ = ["ModelEMA", "unwrap"]


class ModelEMA:
    """A frozen copy of ``model`` whose parameters track an exponential moving average."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False, foreach: bool | None = None):
        """``foreach``: one fused update over all parameters; None: where the EMA lives on CUDA."""
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.foreach = foreach
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
        ema = [p for _, p in self.module.named_parameters()]
        new = [src[name].detach() for name, _ in self.module.named_parameters()]
        if not ema:
            return
        if self.foreach if self.foreach is not None else ema[0].is_cuda:
            torch._foreach_lerp_(ema, new, 1.0 - decay)
            return
        for p, q in zip(ema, new):
            p.mul_(decay).add_(q, alpha=1.0 - decay)

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
