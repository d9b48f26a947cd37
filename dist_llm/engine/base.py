"""The one interface the trainer drives; it never knows which engine is behind it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import nn

from dist_llm.data.batch import Batch
from dist_llm.distributed.dims import ParallelDims

MicroBatches = list[Batch]


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


@dataclass
class TokenScores:
    logprobs: torch.Tensor
    """[B, T] float32: log-probability of each label given the tokens before it; 0 where it is -100."""
    greedy: torch.Tensor
    """[B, T] bool: the label is a most likely next token (greedy decoding would emit it); True
    where the label is -100, so `.all()` over a row asks whether its scored labels all are."""

    @classmethod
    def from_logprobs(cls, picked: torch.Tensor, best: torch.Tensor, labels: torch.Tensor) -> "TokenScores":
        """From the labels' log-probabilities and the largest log-probability at each position (the
        two values `models.decoder.label_logprobs` returns)."""
        return cls(logprobs=picked, greedy=(picked >= best) | (labels == -100))


class Engine(Protocol):
    """One optimizer step over a model replica (or shard), plus its checkpointable state.

    A whole step is one call because some engines (pipeline parallel) schedule micro-batches
    themselves; the trainer only hands over this rank's micro-batches and the learning rate.
    """

    model: nn.Module
    """The bare model (unwrapped; possibly sharded), e.g. for evaluation."""
    dims: ParallelDims
    """Where this rank sits in the layout (its data-parallel rank picks its samples)."""
    checkpoint_format: Literal["dcp", "deepspeed"]
    """How `checkpoint/` saves this engine: its `state_dict()` through torch.distributed.checkpoint
    (sharded, resharded on load), or DeepSpeed's own partition files of `engine.engine`."""

    def train_step(self, micro_batches: MicroBatches, lr: float) -> StepResult:
        """Forward/backward every micro-batch (gradients accumulated, synced once), clip, apply
        the optimizer at `lr`, zero gradients."""
        ...

    def evaluate_loss(self, batch: Batch) -> torch.Tensor:
        """Mean loss of one batch without gradients."""
        ...

    def score_tokens(self, batch: Batch) -> TokenScores:
        """Per-token log-likelihood of `batch["labels"]` given `batch["input_ids"]` (a causal LM),
        without gradients, the same on every rank of one replica (tensor and pipeline peers): what
        downstream task evaluation sums over each continuation."""
        ...

    def memory_report(self) -> dict[str, int]:
        """Per-rank bytes of parameters, gradients and optimizer state."""
        ...
