"""The one interface the trainer drives; it never knows which engine is behind it."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn


class Engine(Protocol):
    """Forward/backward/step over one model replica (or shard), plus its checkpointable state."""

    model: nn.Module
    """The bare model (unwrapped), e.g. for evaluation and export."""

    def forward_backward(self, input_ids: torch.Tensor, labels: torch.Tensor, sync_grads: bool,
                         loss_scale: float) -> torch.Tensor:
        """Run one micro-batch; returns the detached (unscaled) loss. `sync_grads` is False for all
        but the last micro-batch of a step so gradient communication happens once per step."""
        ...

    def step(self, lr: float) -> torch.Tensor:
        """Clip, apply the optimizer at learning rate `lr`, zero grads; returns the pre-clip grad norm."""
        ...

    def evaluate_loss(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean loss of one batch without gradients."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: model, optimizer, loss-scaler."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...

    def memory_report(self) -> dict[str, int]:
        """Per-rank bytes of parameters, gradients and optimizer state."""
        ...
