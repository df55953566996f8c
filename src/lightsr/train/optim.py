"""Optimisers, learning-rate schedules and pixel losses built from the config.

The schedule is a closed-form function of the iteration (:class:`LRSchedule`), set on the
optimiser before every step, so resuming needs nothing but the iteration number and the result
never drifts from the formula. Iterations are 1-based as in BasicSR: the learning rate used at
iteration ``i`` is ``schedule.lr_at(i)``; MultiStepLR halves it *at* each milestone iteration.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from lightsr.train.config import OptimConfig, PixelLossConfig, SchedulerConfig

__all__ = ["LRSchedule", "CharbonnierLoss", "build_loss", "build_optimizer"]


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.type == "Adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.type == "AdamW":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.type == "SGD":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum or 0.0, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimiser {cfg.type}")  # the schema prevents this


class LRSchedule:
    """Learning rate as a function of the (1-based) iteration, with optional linear warm-up."""

    def __init__(self, cfg: SchedulerConfig, base_lr: float, total_iter: int, warmup_iter: int = -1):
        self.cfg = cfg
        self.base_lr = float(base_lr)
        self.total_iter = int(total_iter)
        self.warmup_iter = int(warmup_iter)

    def factor(self, it: int) -> float:
        c = self.cfg
        if c.type == "ConstantLR":
            f = 1.0
        elif c.type == "MultiStepLR":
            f = c.gamma ** sum(1 for m in c.milestones if it >= m)
        elif c.type == "CosineAnnealingLR":
            t_max = c.T_max or self.total_iter
            t = min(it, t_max)
            eta = c.eta_min / self.base_lr
            f = eta + 0.5 * (1.0 - eta) * (1.0 + math.cos(math.pi * t / t_max))
        elif c.type == "CosineAnnealingRestartLR":
            weights = c.restart_weights or [1.0] * len(c.periods)
            start = 0
            f = c.eta_min / self.base_lr
            for period, weight in zip(c.periods, weights):
                if it <= start + period:
                    eta = c.eta_min / self.base_lr
                    f = eta + weight * 0.5 * (1.0 - eta) * (1.0 + math.cos(math.pi * (it - start) / period))
                    break
                start += period
        else:  # pragma: no cover - schema prevents this
            raise ValueError(c.type)
        if 0 < self.warmup_iter and it <= self.warmup_iter:
            f *= it / self.warmup_iter
        return f

    def lr_at(self, it: int) -> float:
        return self.base_lr * self.factor(it)

    def apply(self, optimizer: torch.optim.Optimizer, it: int) -> float:
        lr = self.lr_at(it)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"type": self.cfg.type, "base_lr": self.base_lr, "total_iter": self.total_iter}


class CharbonnierLoss(nn.Module):
    def __init__(self, eps: float = 1e-12, reduction: str = "mean"):
        super().__init__()
        self.eps, self.reduction = eps, reduction

    def forward(self, pred, target):
        loss = torch.sqrt((pred - target) ** 2 + self.eps)
        return loss.mean() if self.reduction == "mean" else loss.sum()


class _Weighted(nn.Module):
    def __init__(self, loss: nn.Module, weight: float):
        super().__init__()
        self.loss, self.weight = loss, float(weight)

    def forward(self, pred, target):
        out = self.loss(pred, target)
        return out if self.weight == 1.0 else out * self.weight


def build_loss(cfg: PixelLossConfig) -> nn.Module:
    if cfg.type == "L1Loss":
        loss = nn.L1Loss(reduction=cfg.reduction)
    elif cfg.type == "MSELoss":
        loss = nn.MSELoss(reduction=cfg.reduction)
    else:
        loss = CharbonnierLoss(cfg.eps, cfg.reduction)
    return _Weighted(loss, cfg.loss_weight)
