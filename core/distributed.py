"""Who computes what in a data-parallel run: the rank and world size, per-item seeds, and the batch
map that validation and evaluation share.

This is the low-level part that ``bench`` (the loop), ``metrics`` (evaluation) and ``models`` (act
norm's initialization) all stand on; setting up the process group, averaging gradients and
launching torchrun live in ``genbench.bench.engine.distributed``. Without an initialized process group (a
plain run, ``bench eval``) every function here acts as the single process it is.

``map_batches`` splits a list of batches across ranks (batch i to rank i mod N) and gathers the
results, in batch order, on every rank. Each batch draws its noise from a seed of its own index
(``derive_seed``), never from a stream shared with the batches before it, so the gathered result
is the one a single process computes, whatever the number of ranks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def is_distributed() -> bool:
    """A process group of more than one rank is initialized (torchrun with N > 1)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the parts, hashed so that nearby parts (seed 0 batch 1, seed 1 batch 0)
    give unrelated streams."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In place across ranks ("sum", "max" or "mean"); the tensor itself in a single process."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        if op == "mean":
            tensor.div_(dist.get_world_size())
    return tensor


def map_batches(fn: Callable[[int, int, int], T], n: int, batch_size: int) -> list[T]:
    """``fn(index, start, stop)`` for the batches [start, stop) of range(n) in steps of batch_size,
    this rank computing batches index = rank, rank + N, ...; every rank returns all results in batch
    order. Results must be picklable host objects (CPU tensors, numbers)."""
    starts = range(0, n, batch_size)
    mine = {
        i: fn(i, start, min(start + batch_size, n))
        for i, start in enumerate(starts)
        if i % world_size() == rank()
    }
    if not is_distributed():
        return [mine[i] for i in range(len(starts))]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, mine)
    merged = {i: result for part in gathered for i, result in part.items()}
    return [merged[i] for i in range(len(starts))]


def gather_objects(obj: T) -> list[T]:
    """One picklable object from every rank, in rank order (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
