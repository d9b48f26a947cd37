"""Learning-rate schedules: linear warmup, then cosine / linear / warmup-stable-decay / constant."""

from __future__ import annotations

import math

from dist_llm.config import OptimConfig


def lr_at(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    min_lr = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "wsd":
        decay_steps = max(1, round(max_steps * cfg.wsd_decay_fraction))
        decay_start = max_steps - decay_steps
        if step < decay_start:
            return cfg.lr
        progress = (step - decay_start) / decay_steps
        return cfg.lr + (min_lr - cfg.lr) * min(1.0, progress)
    span = max(1, max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.schedule == "linear":
        return cfg.lr + (min_lr - cfg.lr) * progress
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1.0 + math.cos(math.pi * progress))
