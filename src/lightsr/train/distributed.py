"""Process-group helpers for ``torchrun`` (single node or multi-node).

``torchrun`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init` reads them, picks NCCL when the process drives a CUDA device and gloo otherwise, and
binds the process to ``cuda:LOCAL_RANK``. Without those variables everything runs as one process.
"""
from __future__ import annotations

import datetime
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init", "shutdown", "barrier", "all_reduce_sum", "any_flag", "all_gather_object", "broadcast_object"]


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init(use_cuda: bool, timeout_min: float = 30.0) -> DistInfo:
    """Initialise the process group from the ``torchrun`` environment (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    cuda = use_cuda and torch.cuda.is_available()
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices are visible; "
                f"use --nproc_per_node <= the number of GPUs"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    info = DistInfo(rank, local_rank, world, local_world, device, None)
    if world > 1:
        backend = "nccl" if cuda else "gloo"
        if not dist.is_initialized():
            kwargs = {"device_id": device} if cuda else {}
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_min), **kwargs)
        info.backend = backend
    return info


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a list of floats over all ranks (float64)."""
    if not _active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_flag(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    if not _active():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_gather_object(obj):
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def no_buffer_sync_kwargs() -> dict:
    """DistributedDataParallel keyword that skips re-broadcasting buffers before every forward.

    The models' buffers are constants (RGB mean, LAMNet's tap map), identical on every rank.
    torch 2.13 deprecates ``broadcast_buffers`` for ``forward_sync_buffers`` (which still syncs
    once at construction: harmless for constants); older versions only know the former.
    """
    params = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
