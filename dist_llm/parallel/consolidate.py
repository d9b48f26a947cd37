"""Moving between sharded (TP shards, pipeline stages) and full tensors for checkpoints.

Checkpoints hold full tensors keyed like the unsharded model, so a run can resume at any TP/PP/DP
degree (or on the DDP engine): saving gathers to rank 0, loading cuts each rank's piece out of
the full tensor locally.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor


def full_cpu(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on CPU. Collective over the DTensor's mesh: every rank holding a shard of
    it must call this, in the same order."""
    full = t.full_tensor() if isinstance(t, DTensor) else t
    return full.detach().cpu()


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's piece of `full`, laid out like `like` (a DTensor of the same global shape, or a
    plain tensor). No communication: every rank read the same full tensor from the checkpoint."""
    full = full.to(device=like.device, dtype=like.dtype)
    if isinstance(like, DTensor):
        return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)
    return full


def gather_to_rank0(part: dict[str, Any] | None) -> dict[str, Any] | None:
    """Merge the dicts that ranks contribute (None = nothing) into one dict on global rank 0.
    Pickled through gather_object: simple and backend-agnostic, bounded by rank 0's memory, which
    must hold the consolidated model anyway."""
    parts: list[dict[str, Any] | None] | None = None
    if dist.get_rank() == 0:
        parts = [None] * dist.get_world_size()
    dist.gather_object(part, parts, dst=0)
    if parts is None:
        return None
    merged: dict[str, Any] = {}
    for p in parts:
        merged.update(p or {})
    return merged
