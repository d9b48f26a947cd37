"""Gradient reductions for DTensor-sharded, pipeline-split models: data-parallel averaging, tied
weights across pipeline stages, and clipping by the true global norm.

Parameters are a mix of DTensors (TP-sharded matrices, sequence-parallel norms) and plain tensors
(replicated embedding/head/norms), which `torch.nn.utils.clip_grad_norm_` and foreach kernels
cannot combine; these helpers work on the local tensors and say explicitly which group reduces what.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

_BUCKET_ELEMENTS = 25_000_000  # ~100 MB of fp32 per all-reduce, the DDP default order of magnitude


def local(t: torch.Tensor) -> torch.Tensor:
    """The tensor this rank holds (a DTensor's local shard, else the tensor itself)."""
    return t.to_local() if isinstance(t, DTensor) else t


def reduce_partial_grads(params: Iterable[nn.Parameter]) -> None:
    """Turn Partial (pending-sum) gradients into Replicate ones. Sequence-parallel norm weights
    get Partial gradients: each TP rank only saw its slice of the sequence."""
    for p in params:
        g = p.grad
        if isinstance(g, DTensor) and any(isinstance(pl, Partial) for pl in g.placements):
            p.grad = g.redistribute(placements=[Replicate() if isinstance(pl, Partial) else pl
                                                for pl in g.placements])


def all_reduce_grads(params: Iterable[nn.Parameter], group: dist.ProcessGroup, average: bool) -> None:
    """Sum (or average) the local gradients over `group`, flattened into large buckets so a step
    costs a few collectives, not one per parameter. Averaging pre-divides, as DDP does."""
    grads = [local(p.grad) for p in params if p.grad is not None]
    size = dist.get_world_size(group)
    if size == 1 or not grads:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    for same_dtype in by_dtype.values():
        bucket: list[torch.Tensor] = []
        for g in same_dtype:
            bucket.append(g)
            if sum(t.numel() for t in bucket) >= _BUCKET_ELEMENTS:
                _reduce_bucket(bucket, group, size if average else 1)
                bucket = []
        if bucket:
            _reduce_bucket(bucket, group, size if average else 1)


def _reduce_bucket(grads: list[torch.Tensor], group: dist.ProcessGroup, divisor: int) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads])
    if divisor > 1:
        flat.div_(divisor)
    dist.all_reduce(flat, group=group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def clip_grad_norm_(params: list[nn.Parameter], max_norm: float, tp_group: dist.ProcessGroup | None,
                    pp_group: dist.ProcessGroup | None, skip: set[int] = frozenset()) -> torch.Tensor:
    """Clip gradients by the norm of the whole model's gradient, and return that norm.

    Sharded gradients add their squared local norms over `tp_group`; replicated ones count once;
    stages add their sums over `pp_group`. `skip` holds ids of parameters counted on another stage
    (the head copy of a tied embedding). Same formula as `torch.nn.utils.clip_grad_norm_`.
    """
    # Summed on the device: a per-parameter copy to the host would sync once per parameter.
    device = params[0].device if params else torch.device("cpu")
    sharded = torch.zeros((), dtype=torch.float32, device=device)
    replicated = torch.zeros((), dtype=torch.float32, device=device)
    for p in params:
        if p.grad is None or id(p) in skip:
            continue
        sq = torch.linalg.vector_norm(local(p.grad), dtype=torch.float32).square()
        if isinstance(p.grad, DTensor) and any(isinstance(pl, Shard) for pl in p.grad.placements):
            sharded += sq
        else:
            replicated += sq
    if tp_group is not None:
        dist.all_reduce(sharded, group=tp_group)
    total = sharded + replicated
    if pp_group is not None:
        dist.all_reduce(total, group=pp_group)
    norm = total.sqrt()
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for p in params:
        if p.grad is not None:
            local(p.grad).mul_(coef.to(p.grad.device))
    return norm
