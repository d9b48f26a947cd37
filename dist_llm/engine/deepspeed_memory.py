"""Per-rank bytes a DeepSpeed engine holds, counted from the partitions ZeRO actually allocated.

Keys match the torch engine's report (param/grad/optimizer bytes) plus `master_param_bytes`: ZeRO
keeps an fp32 copy of this rank's partition for the optimizer. Under bf16/fp16 that copy is the
master weights the torch engine keeps as its parameters; in fp32 runs it duplicates the partition.
"""

from __future__ import annotations

import torch
from torch import nn


def zero_memory_report(model: nn.Module, optimizer: torch.optim.Optimizer, stage: int) -> dict[str, int]:
    params = list(model.parameters())
    element = params[0].element_size()
    # ZeRO-3 replaces each parameter's data by an empty placeholder and keeps the partition in ds_tensor.
    param_numel = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params)
    master = _fp32_partitions(optimizer, stage)
    partition_numel = sum(t.numel() for t in master)
    # Stage 0/1 accumulate full-size gradients on every rank; stage 2/3 keep only this rank's partition.
    grad_numel = sum(p.numel() for p in params) if stage <= 1 else partition_numel
    inner = getattr(optimizer, "optimizer", optimizer)
    state = sum(
        t.numel() * t.element_size() for s in inner.state.values() for t in s.values() if torch.is_tensor(t)
    )
    return {
        "param_bytes": param_numel * element,
        "grad_bytes": grad_numel * element,
        "optimizer_bytes": state,
        "master_param_bytes": sum(t.numel() * t.element_size() for t in master),
    }


def _fp32_partitions(optimizer: torch.optim.Optimizer, stage: int) -> list[torch.Tensor]:
    if stage == 3:
        return list(optimizer.fp32_partitioned_groups_flat)
    if stage in (1, 2):
        return list(optimizer.single_partition_of_fp32_groups)
    return []
