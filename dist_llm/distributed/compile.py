"""torch.compile per Transformer block, the torchtitan way: each block is compiled on its own
(`nn.Module.compile`, in place), so graphs stay small, repeated blocks share one compiled code
object, and parameter names (checkpoints, optimizer state, HF export) do not change."""

from __future__ import annotations

from torch import nn


def apply_compile(model: nn.Module) -> nn.Module:
    """Compile every block of every `layers` stack in `model` (decoder, encoder, both T5 stacks)."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "layers" and isinstance(module, nn.ModuleDict):
            for block in module.values():
                block.compile()
    return model
