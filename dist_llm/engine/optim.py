"""AdamW with decay on matrices only, using the fastest implementation the device offers."""

from __future__ import annotations

import torch
from torch import nn

from dist_llm.config import OptimConfig


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Norm gains (1-D) are not decayed: shrinking them toward 0 only fights the normalization."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def build_adamw(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    groups = param_groups(model, cfg)
    # fused kernels exist for CUDA and CPU tensors; foreach is the fallback elsewhere.
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             fused=fused, foreach=None if fused else True)
