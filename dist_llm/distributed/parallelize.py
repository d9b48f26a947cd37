"""The one place that decides in which order parallelisms are applied to a (pipeline stage of a) model."""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from dist_llm.config import EngineConfig
from dist_llm.distributed.activation_checkpointing import apply_activation_checkpointing
from dist_llm.distributed.compile import apply_compile
from dist_llm.distributed.data_parallel import apply_data_parallel
from dist_llm.distributed.dims import ParallelDims
from dist_llm.distributed.tensor_parallel import apply_tensor_parallel


def parallelize(
    model: nn.Module, mesh: DeviceMesh | None, dims: ParallelDims, cfg: EngineConfig
) -> nn.Module:
    """Tensor parallelism over `mesh["tp"]`, then activation checkpointing, then compile, then data
    parallelism (FSDP2 / HSDP / replication), in place, on a model still on the meta device.

    Pipeline splitting happens before this (each stage is parallelized on its own), as in
    torchtitan. TP comes before checkpointing so the recomputed forward replays the sharded modules,
    comms included; FSDP comes last so it wraps the final modules and shards what TP left local.
    """
    if dims.tp > 1:
        apply_tensor_parallel(model, mesh["tp"])
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    if cfg.compile:
        apply_compile(model)
    if dims.dp > 1:
        reshard = cfg.reshard_after_forward if cfg.reshard_after_forward is not None else dims.pp == 1
        apply_data_parallel(model, mesh, dims, reshard, cfg.param_dtype, cfg.reduce_dtype, cfg.cpu_offload)
    return model
