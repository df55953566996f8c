"""Data-parallel batch jobs under ``torchrun``: each process takes its share of a work list, rank 0
gathers the per-item results and speaks for all. One machine or many: torchrun's rendezvous
connects the processes; lightsr adds only the sharding and the gathering.

    torchrun --nproc_per_node 4 job.py
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 job.py

Inside a command::

    with parallel.start(device) as job:        # a process group only when torchrun started >1 process
        files = job.broadcast(list_inputs() if job.is_main else None)  # one listing for all
        mine = job.shard(files)                # the sorted list, every world_size-th item from this rank
        results = [work(f) for f in mine]      # one picklable result per item, in shard order
        everything = job.gather(results)       # rank 0: all results in sorted-list order; other ranks: None
        if job.is_main:
            print(summary(everything))
        return job.finish(any_failed)          # every rank's verdict; the exit code, rank 0 carries it

The process group (gloo on the CPU, NCCL on CUDA), the device (``cuda:LOCAL_RANK``) and the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``) are those of
:mod:`lightsr.train.distributed`. On the CPU the idle cores are split among the processes of a machine
(``threads`` overrides; torchrun's own ``OMP_NUM_THREADS=1`` default is replaced by the split).
Without torchrun, or with one process, there is no process group and every call is local:
``shard`` returns the whole sorted list, ``gather`` the results, ``finish`` the flag's exit code.

Exit codes: torchrun stops the other processes as soon as one exits non-zero, so only rank 0
returns the failure (after every rank has reached :meth:`Job.finish`, its summary printed);
torchrun then exits non-zero. An exception in any process ends the whole job (torchrun).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence, TypeVar

import torch
import torch.distributed as dist

from lightsr.train import distributed as D

__all__ = ["Job", "merge", "shard", "start"]

T = TypeVar("T")
DEFAULT_TIMEOUT_MIN = 180.0  # how long a collective waits for the slowest rank (ranks' shards differ)


def shard(items: Iterable[T], rank: int, world_size: int, key: Callable[[T], object] = str) -> list[T]:
    """Rank ``rank``'s share of ``items``: sorted by ``key`` (so every rank, on every machine, sees
    the same order whatever the listing order), then every ``world_size``-th item from ``rank``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    return sorted(items, key=key)[rank::world_size]


def merge(per_rank: Sequence[Sequence[T]]) -> list[T]:
    """Undo :func:`shard`: per-rank result lists (one result per item, in shard order) -> one list
    in the order of the sorted work list."""
    world = len(per_rank)
    sizes = [len(r) for r in per_rank]
    total = sum(sizes)
    if sizes != [len(range(r, total, world)) for r in range(world)]:
        raise ValueError(f"result counts per rank {sizes} do not fit a round-robin shard of {total} items")
    out: list = [None] * total
    for rank, results in enumerate(per_rank):
        out[rank::world] = list(results)
    return out


@dataclass
class Job:
    """One process of a (possibly) distributed batch job; see the module doc."""

    info: D.DistInfo
    threads: int | None  # intra-op threads set on the CPU (None: left as they were)
    owns_group: bool  # this Job initialised the process group (and destroys it on close)

    @property
    def rank(self) -> int:
        return self.info.rank

    @property
    def world_size(self) -> int:
        return self.info.world_size

    @property
    def is_main(self) -> bool:
        return self.info.is_main

    @property
    def device(self) -> torch.device:
        return self.info.device

    def shard(self, items: Iterable[T], key: Callable[[T], object] = str) -> list[T]:
        return shard(items, self.rank, self.world_size, key)

    def gather(self, results: Sequence[T]) -> list[T] | None:
        """Every rank's per-item results to rank 0, merged in sorted-list order; None on other ranks."""
        gathered = self.gather_object(list(results))
        return merge(gathered) if gathered is not None else None

    def gather_object(self, obj: object) -> list | None:
        """Any picklable object from every rank: rank 0 gets them by rank, other ranks None."""
        if not self.info.distributed:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (e.g. one listing of the inputs for all ranks)."""
        return D.broadcast_object(obj, src=0)

    def barrier(self) -> None:
        D.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank."""
        return D.any_flag(flag, self.device)

    def finish(self, failed: bool) -> int:
        """Agree on failure (waits for every rank) and return this process's exit code."""
        return 1 if self.any(failed) and self.is_main else 0

    def close(self) -> None:
        if self.owns_group:
            D.shutdown()
            self.owns_group = False

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start(device: str | torch.device = "auto", threads: int | None = None,
          timeout_min: float = DEFAULT_TIMEOUT_MIN) -> Job:
    """Join the job torchrun launched (if it did) and pick this process's device and threads.

    ``device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda`` (each process then takes
    ``cuda:LOCAL_RANK``). ``threads``: intra-op CPU threads (default: when there are several
    processes on this machine, its idle cores - those not already busy by the load average - split
    among them, at least 1 each (:func:`lightsr.inference.policy.default_threads`); else unchanged).
    """
    from lightsr.inference.policy import default_threads
    from lightsr.inference.runner import resolve_device

    use_cuda = resolve_device(device).type == "cuda"
    had_group = dist.is_available() and dist.is_initialized()
    info = D.init(use_cuda, timeout_min=timeout_min)
    if info.device.type == "cpu" and (threads or info.local_world_size > 1):
        threads = threads or default_threads(processes=info.local_world_size)
        torch.set_num_threads(threads)
    else:
        threads = None
    return Job(info, threads, owns_group=info.distributed and not had_group)
