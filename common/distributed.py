"""Collectives that are no-ops in a single process, so model and loop code reads the same
whether it runs alone or as one of many DDP processes."""
from __future__ import annotations

import torch
import torch.distributed as dist


def processes() -> int:
    """How many processes train together (1 outside torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """t combined over every process, in place: op is sum, max or min."""
    if processes() > 1:
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return t


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a (N, D) tensor from every process (same N everywhere)."""
    if processes() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(processes())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def broadcast(t: torch.Tensor) -> torch.Tensor:
    """The main process's copy of t on every process, in place."""
    if processes() > 1:
        dist.broadcast(t, src=0)
    return t


def broadcast_object(obj):
    """The main process's copy of a picklable object on every process."""
    if processes() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
