"""Process-group setup from torchrun's environment; gloo on CPU, NCCL when CUDA is present."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dist_llm.distributed.host_allocator import return_freed_buffers


@dataclass(frozen=True)
class World:
    rank: int
    local_rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str = "auto") -> World:
    """Join the process group torchrun describes (or run alone when launched without it)."""
    rank = int(os.environ.get("RANK", "0"))
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        return_freed_buffers()
    if size > 1 and not dist.is_initialized():
        chosen = ("nccl" if cuda else "gloo") if backend == "auto" else backend
        dist.init_process_group(backend=chosen, device_id=device if chosen == "nccl" else None)
    return World(rank=rank, local_rank=local_rank, size=size, device=device)


def ensure_process_group() -> None:
    """A 1-rank gloo group when none exists: DeepSpeed talks through a process group and reads
    torchrun's variables even for a single rank started without torchrun."""
    if dist.is_initialized():
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    for key, value in {"LOCAL_RANK": 0, "RANK": 0, "WORLD_SIZE": 1}.items():
        os.environ.setdefault(key, str(value))


def shutdown() -> None:
    """Leave the group together: a rank that tears gloo down while its peer is still mid-collective
    can abort the peer ("terminate called without an active exception")."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a small tensor across ranks (in place, returned for chaining)."""
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_sum_async(values: torch.Tensor) -> dist.Work | None:
    """Start summing a small tensor across ranks in place; `wait()` on the returned work before
    reading it (None when running alone: `values` is already the sum)."""
    if dist.is_initialized():
        return dist.all_reduce(values, op=dist.ReduceOp.SUM, async_op=True)
    return None


def broadcast_object(obj: object) -> object:
    """Rank 0's value of a picklable object, on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_rows(row: torch.Tensor) -> torch.Tensor:
    """Every rank's copy of a small 1-D tensor, stacked by rank, on the host."""
    if not dist.is_initialized():
        return row.cpu().unsqueeze(0)
    rows = [torch.empty_like(row) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, row)
    return torch.stack(rows).cpu()


def all_gather_object(obj: object) -> list[object]:
    """Every rank's value of a picklable object, by rank."""
    if not dist.is_initialized():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
