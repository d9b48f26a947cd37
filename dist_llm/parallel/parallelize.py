"""The one place that decides in which order parallelisms are applied to a (pipeline stage of a) model."""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from dist_llm.config import EngineConfig
from dist_llm.parallel.activation_checkpointing import apply_activation_checkpointing
from dist_llm.parallel.compile import apply_compile
from dist_llm.parallel.tensor_parallel import apply_tensor_parallel


def parallelize(model: nn.Module, mesh: DeviceMesh, cfg: EngineConfig) -> nn.Module:
    """Apply tensor parallelism over `mesh["tp"]`, then activation checkpointing, then compile, in place.

    Pipeline splitting happens before this (each stage is parallelized on its own) and data
    parallelism after it (the engine averages gradients over `mesh["dp"]`), as in torchtitan.
    TP comes before checkpointing so the recomputed forward replays the sharded modules, comms
    included.
    """
    if cfg.tp > 1:
        apply_tensor_parallel(model, mesh["tp"], cfg.sequence_parallel)
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    if cfg.compile:
        apply_compile(model)
    return model
