"""AdamW with decay on matrices only, using the fastest implementation the device offers."""

from __future__ import annotations

import torch
from torch import nn

from dist_llm.config import OptimConfig


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Norm gains (1-D) are not decayed: shrinking them toward 0 only fights the normalization."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if _ndim(p) >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if _ndim(p) < 2], "weight_decay": 0.0},
    ]


def _ndim(p: nn.Parameter) -> int:
    # A DeepSpeed ZeRO-3 parameter built under zero.Init holds an empty placeholder; `ds_shape` is its shape.
    return len(getattr(p, "ds_shape", p.shape))


def build_adamw(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    groups = param_groups(model, cfg)
    # fused kernels exist for CUDA and CPU tensors; foreach is the fallback elsewhere.
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=fused,
        foreach=None if fused else True,
    )


def step_if_finite(optimizer: torch.optim.Optimizer, finite: torch.Tensor) -> bool | torch.Tensor:
    """Apply `optimizer` unless `finite` (a 0-d bool on the device) is False, so a NaN/Inf never
    reaches the weights or the Adam moments; returns whether the step was skipped.

    Fused AdamW reads `found_inf` on the device, the way GradScaler passes it: at 1 it leaves
    weights and moments alone and undoes its step-count increment, so the decision needs no host
    sync and the returned flag is a device tensor. Other kernels have no such input and pay one
    host sync here.
    """
    found_inf = (~finite).float()
    if not all(group.get("fused") for group in optimizer.param_groups):
        skipped = bool(found_inf)
        if not skipped:
            optimizer.step()
        return skipped
    optimizer.found_inf = found_inf
    optimizer.step()
    del optimizer.found_inf
    return found_inf
