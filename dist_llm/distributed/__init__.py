"""Everything about parallelism, in one package: the process group and world, the
`(pp, dp_replicate, dp_shard, tp)` layout and its device mesh, and `parallelize`, which applies tensor
parallelism, activation checkpointing, compile and data parallelism (FSDP2 / HSDP / replication) to a
model built on the meta device, then materializes each rank's shard. Models stay parallelism-free.

This module exports the world (imported everywhere); the parallelisms live in their submodules:
    dims.ParallelDims        where a rank sits in the layout; the device mesh
    parallelize.parallelize  TP -> activation checkpointing -> compile -> FSDP2/HSDP/replicate
    materialize              layout-independent initialization of the local shards
    pipeline                 pipeline stages and schedules
    grads                    gradient norm and clipping over any mix of meshes, tied stage copies
"""

from dist_llm.distributed.world import (
    World,
    all_gather_object,
    all_gather_rows,
    all_reduce_sum,
    all_reduce_sum_async,
    barrier,
    broadcast_object,
    ensure_process_group,
    init_distributed,
    shutdown,
)

__all__ = [
    "World",
    "all_gather_object",
    "all_gather_rows",
    "all_reduce_sum",
    "all_reduce_sum_async",
    "barrier",
    "broadcast_object",
    "ensure_process_group",
    "init_distributed",
    "shutdown",
]
