"""Gradient reductions the data-parallel wrapper does not do: pending sums left by sequence
parallelism, tied weights split across pipeline stages, and the global norm for clipping.

Gradients may be plain tensors (one rank, pipeline stages without data parallelism) or DTensors on
different meshes (FSDP2's, TP's); the norm is summed per mesh on the device (DTensor reduces the
sharded dimensions), then over pipeline stages, with no host sync.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor


def local(t: torch.Tensor) -> torch.Tensor:
    """The tensor this rank holds (a DTensor's local shard, else the tensor itself)."""
    return t.to_local() if isinstance(t, DTensor) else t


def reduce_partial_grads(params: Iterable[nn.Parameter]) -> None:
    """Give every gradient its parameter's layout. Tensor parallelism leaves some as pending sums
    (Partial): a sequence-parallel norm's weight saw only this rank's tokens, a vocabulary-parallel
    embedding's only this rank's rows; a reduce(-scatter) finishes them."""
    for p in params:
        g = p.grad
        if isinstance(g, DTensor) and isinstance(p, DTensor) and g.placements != p.placements:
            p.grad = g.redistribute(placements=p.placements)


@torch.no_grad()
def sum_tied_grads(param: nn.Parameter | None, group: dist.ProcessGroup | None) -> None:
    """Add up the gradients of one weight's copies on the first and last pipeline stage (a tied
    embedding and head), so both copies take the same step."""
    if param is not None and group is not None and param.grad is not None:
        dist.all_reduce(local(param.grad), group=group)


@torch.no_grad()
def clip_grad_norm_(
    params: list[nn.Parameter],
    max_norm: float,
    pp_group: dist.ProcessGroup | None,
    skip: frozenset[int] = frozenset(),
) -> torch.Tensor:
    """Clip gradients by the norm of the whole model's gradient, and return that norm.

    `skip` holds ids of parameters counted on another stage (the head copy of a tied embedding);
    stages add their squared norms over `pp_group`. Same formula as `torch.nn.utils.clip_grad_norm_`.
    """
    by_mesh: dict[object, list[nn.Parameter]] = {}
    for p in params:
        if p.grad is not None:
            by_mesh.setdefault(p.grad.device_mesh if isinstance(p.grad, DTensor) else None, []).append(p)
    device = next(iter(by_mesh.values()))[0].device if by_mesh else torch.device("cpu")
    total = torch.zeros((), dtype=torch.float32, device=device)
    for group in by_mesh.values():
        counted = [p.grad for p in group if id(p) not in skip]
        if counted:
            norm = torch.nn.utils.get_total_norm(counted, 2.0)
            total += (norm.full_tensor() if isinstance(norm, DTensor) else norm).float().square()
    if pp_group is not None:
        dist.all_reduce(total, group=pp_group)
    norm = total.sqrt()
    for group in by_mesh.values():  # foreach kernels take one mesh (or plain tensors) per call
        torch.nn.utils.clip_grads_with_norm_(group, max_norm, norm)
    return norm
