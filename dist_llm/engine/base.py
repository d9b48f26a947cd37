"""The one interface the trainer drives; it never knows which engine is behind it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import nn

Batch = dict[str, torch.Tensor]
"""Model inputs keyed by `forward` keyword (input_ids, labels, ...); see `data.collate`."""
MicroBatches = list[Batch]
ReadPart = Callable[[str], bytes]


@dataclass
class StepResult:
    loss: torch.Tensor
    """Mean loss over this rank's micro-batches (detached, on device: reading it syncs the host)."""
    grad_norm: torch.Tensor
    """Global gradient norm before clipping."""
    skipped: bool | torch.Tensor = False
    """True when the loss or gradients were not finite and the optimizer step was not applied; or a
    one-element device tensor (nonzero: skipped) from an engine that decides on the device, so the
    step needs no host sync (read a step later, see `callbacks.nonfinite`)."""


class Engine(Protocol):
    """One optimizer step over a model replica (or shard), plus its checkpointable state.

    A whole step is one call because some engines (pipeline parallel) schedule micro-batches
    themselves; the trainer only hands over this rank's micro-batches and the learning rate.
    """

    model: nn.Module
    """The bare model (unwrapped; possibly sharded), e.g. for evaluation."""

    def train_step(self, micro_batches: MicroBatches, lr: float) -> StepResult:
        """Forward/backward every micro-batch (gradients accumulated, synced once), clip, apply
        the optimizer at `lr`, zero gradients."""
        ...

    def evaluate_loss(self, batch: Batch) -> torch.Tensor:
        """Mean loss of one batch without gradients."""
        ...

    def checkpoint_parts(self) -> dict[str, Any]:
        """This rank's engine files for a checkpoint (optimizer state, shards): name -> bytes, or a
        state object that is already a snapshot (`checkpoint.serialize.snapshot`); objects are
        serialized off the training thread."""
        ...

    def load_checkpoint_parts(self, read: ReadPart, names: list[str]) -> None:
        """Restore from a checkpoint whose files are `names`; `read(name)` returns one file's bytes."""
        ...

    def consolidated_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full, unsharded model weights on rank 0 (None on other ranks). Collective."""
        ...

    def memory_report(self) -> dict[str, int]:
        """Per-rank bytes of parameters, gradients and optimizer state."""
        ...
