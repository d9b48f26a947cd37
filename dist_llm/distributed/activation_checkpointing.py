"""Per-block activation checkpointing: keep each block's input, recompute its insides in backward."""

from __future__ import annotations

from torch import nn
from torch.distributed._composable import checkpoint


def apply_activation_checkpointing(model: nn.Module) -> nn.Module:
    """Checkpoint every Transformer block in `model.layers` (in place; returns `model`).

    The composable `checkpoint` installs forward hooks instead of wrapping the module, so parameter
    names (and therefore checkpoints, optimizer state and HF export) are unchanged, and it composes
    with DDP, DTensor tensor parallelism and pipeline stages alike. Non-reentrant recomputation
    restores the RNG state, so dropout masks match the first forward and losses are unchanged.
    """
    for block in model.layers.values():
        checkpoint(block)
    return model
