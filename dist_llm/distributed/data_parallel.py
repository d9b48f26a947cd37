"""Data parallelism with FSDP2 over the `(dp_replicate, dp_shard)` part of the mesh.

- dp_shard > 1: `fully_shard` (ZeRO-3-like: parameters, gradients and optimizer state sharded;
  parameters all-gathered per block just in time); with dp_replicate > 1 as well, HSDP: sharded
  within a group of dp_shard ranks (a node), replicated across groups.
- dp_shard == 1, dp_replicate > 1: `replicate`, plain data parallelism (a full replica per rank,
  gradients all-reduced), built on the same FSDP2 machinery so it composes with TP and PP.

Each Transformer block is its own communication group (its all-gather overlaps the previous block's
compute); the root takes what is left (embeddings, final norm, head), so a tied head and embedding
stay one parameter in one group.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn
from torch.distributed._composable.replicate_with_fsdp import replicate
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

from dist_llm.distributed.dims import ParallelDims

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def transformer_blocks(model: nn.Module) -> Iterator[nn.Module]:
    """The blocks of every `layers` stack (decoder, encoder, both T5 stacks)."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "layers" and isinstance(module, (nn.ModuleDict, nn.ModuleList)):
            yield from module.children()


def apply_data_parallel(
    model: nn.Module,
    mesh: DeviceMesh,
    dims: ParallelDims,
    reshard_after_forward: bool,
    param_dtype: str,
    reduce_dtype: str,
    cpu_offload: bool,
) -> None:
    """Shard (or replicate) `model` over the data-parallel mesh dimensions, in place."""
    policy = MixedPrecisionPolicy(param_dtype=DTYPES[param_dtype], reduce_dtype=DTYPES[reduce_dtype])
    offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cpu_offload else OffloadPolicy()
    if dims.dp_shard > 1:
        dp_mesh = mesh["dp_replicate", "dp_shard"] if dims.dp_replicate > 1 else mesh["dp_shard"]

        def wrap(module: nn.Module, reshard: bool) -> None:
            fully_shard(
                module, mesh=dp_mesh, reshard_after_forward=reshard, mp_policy=policy, offload_policy=offload
            )
    else:

        def wrap(module: nn.Module, reshard: bool) -> None:
            replicate(module, mesh=mesh["dp_replicate"], mp_policy=policy, offload_policy=offload)

    for block in transformer_blocks(model):
        wrap(block, reshard_after_forward)
    # The root's parameters are needed again as soon as backward starts: never resharded.
    wrap(model, False)
