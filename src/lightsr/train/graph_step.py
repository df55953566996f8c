"""Fewer kernel launches on CUDA: the training step and inference replayed from CUDA graphs.

On a GPU lightsr's small models are launch-bound (docs/gpu.md: a dlgsanet_tiny step issued
~4,700 kernels while the GPU was busy a quarter of the time). A CUDA graph records every kernel of
a step once and replays them with one launch. It needs fixed shapes (training: batch x patch;
inference: the tile size) and static memory, which these wrappers provide:

* :class:`GraphedStep` - forward, loss and backward of a training step. The optimiser step, the
  learning-rate schedule, gradient clipping and the EMA stay eager (so the schedule keeps working:
  a captured optimiser would freeze the learning rate). After each replay ``p.grad`` are the
  graph's gradient tensors, so ``optimizer.zero_grad(set_to_none=True)`` before the call is harmless.
* :class:`GraphedForward` - ``fn(x)`` under ``torch.inference_mode``, one graph per input shape
  (up to ``max_shapes``; :class:`lightsr.inference` tiles have one or a few shapes).
* :func:`fixed_shape_tuning` - ``cudnn.benchmark`` on while shapes are fixed.

Each is behind a switch (``enabled``) and falls back to the same eager computation when it cannot
capture: no CUDA, a DDP-wrapped model (its gradient hooks are not capturable), a new input shape
(training), or ``enabled=False``. ``fallback_reason`` says why. The eager and the graphed path
run the same function (:meth:`GraphedStep.eager`), so their losses and gradients agree.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable

import torch
import torch.nn as nn

__all__ = ["GraphedForward", "GraphedStep", "fixed_shape_tuning"]

log = logging.getLogger("lightsr.train")


def _capture_blocker(device: torch.device, model: nn.Module | None = None) -> str | None:
    """Why CUDA-graph capture cannot be used here, or None."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device (this is {device.type})"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return "DistributedDataParallel's gradient hooks cannot be captured"
    return None


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def _side_stream(device: torch.device):
    """Run warm-up work on a side stream, as CUDA-graph capture requires."""
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        yield
    torch.cuda.current_stream(device).wait_stream(side)


class GraphedStep:
    """``loss = step(lq, gt)``: forward, ``loss_fn(model(lq).float(), gt)`` and backward, from a CUDA graph.

    Args:
        model: the model (on its device, in train mode).
        loss_fn: pixel loss ``(sr, gt) -> scalar``.
        amp_dtype: autocast dtype (``torch.bfloat16`` / ``torch.float16``) or None.
        scaler: a ``GradScaler`` (fp16): the backward runs on ``scaler.scale(loss)``.
        enabled: the switch; when False (or capture impossible) every call runs :meth:`eager`.
        warmup: eager forward/backward passes on a side stream before capture (cuDNN autotuning,
            lazy caches); they leave the parameters unchanged (no optimiser step).

    The returned loss tensor is overwritten by the next call (read it before then). Gradients
    land in ``p.grad`` as in eager mode; the first call at a new shape captures (a few eager passes).
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, *, amp_dtype: torch.dtype | None = None,
                 scaler=None, enabled: bool = True, warmup: int = 3):
        self.model, self.loss_fn = model, loss_fn
        self.amp_dtype, self.scaler, self.warmup = amp_dtype, scaler, int(warmup)
        self.device = _device_of(model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.fallback_reason = "switched off" if not enabled else _capture_blocker(self.device, model)
        self.graph = None
        self.key = None
        self.replays = 0
        self._warned: set[str] = set()

    @property
    def captures(self) -> bool:
        """True when calls replay (or will capture) a CUDA graph."""
        return self.fallback_reason is None

    def eager(self, lq: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """The step without a graph: forward (autocast if asked), loss, backward; returns the loss."""
        amp = (torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=False)
               if self.amp_dtype is not None else contextlib.nullcontext())
        with amp:
            out = self.model(lq)
        loss = self.loss_fn(out.float(), gt)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        return loss.detach()

    def __call__(self, lq: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        if not self.captures:
            return self.eager(lq, gt)
        key = (tuple(lq.shape), lq.dtype, tuple(gt.shape), gt.dtype)
        if self.graph is None:
            self._capture(lq, gt, key)
        elif key != self.key:
            self._note(f"input shape {key[0]} / {key[2]} differs from the captured {self.key[0]} / {self.key[2]}: "
                       "this step runs eagerly")
            return self.eager(lq, gt)
        self.static_lq.copy_(lq)
        self.static_gt.copy_(gt)
        self.graph.replay()
        self.replays += 1
        for p, g in zip(self.params, self.static_grads):
            p.grad = g  # the graph's gradient tensors, whatever zero_grad did since
        return self.static_loss

    def _zero_grads(self) -> None:
        for p in self.params:
            p.grad = None

    def _capture(self, lq: torch.Tensor, gt: torch.Tensor, key) -> None:
        self.static_lq, self.static_gt = lq.detach().clone(), gt.detach().clone()
        with _side_stream(self.device):
            for _ in range(self.warmup):
                self._zero_grads()
                self.eager(self.static_lq, self.static_gt)
        self._zero_grads()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_loss = self.eager(self.static_lq, self.static_gt)
        self.static_grads = [p.grad for p in self.params]
        self.key = key
        log.info("training step captured in a CUDA graph (batch %s)", "x".join(map(str, key[0])))

    def _note(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning("%s", message)


class GraphedForward:
    """``y = graphed(x)``: ``fn(x)`` under ``torch.inference_mode``, replayed from one CUDA graph per
    input shape and dtype (at most ``max_shapes``; further shapes run eagerly).

    ``fn`` is the whole forward to capture, autocast included (e.g. ``ModelRunner._forward``'s body).
    The result is a fresh tensor (a copy of the graph's static output).
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], device: torch.device | str, *,
                 enabled: bool = True, max_shapes: int = 4, warmup: int = 2):
        self.fn = fn
        self.device = torch.device(device)
        self.fallback_reason = "switched off" if not enabled else _capture_blocker(self.device)
        self.max_shapes, self.warmup = int(max_shapes), int(warmup)
        self.graphs: dict = {}

    @property
    def captures(self) -> bool:
        return self.fallback_reason is None

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.captures or x.device.type != "cuda":
            return self.fn(x)
        key = (tuple(x.shape), x.dtype)
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.max_shapes:
                return self.fn(x)
            entry = self.graphs[key] = self._capture(x)
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def _capture(self, x: torch.Tensor):
        static_in = x.clone()
        with _side_stream(x.device):
            for _ in range(self.warmup):
                self.fn(static_in)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.fn(static_in)
        return graph, static_in, static_out


@contextlib.contextmanager
def fixed_shape_tuning(enabled: bool = True):
    """``torch.backends.cudnn.benchmark = enabled`` inside the block (cuDNN picks the fastest
    algorithm per shape: worth it when shapes repeat, as in training or tiled inference)."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous
