"""What one rank holds of the training state, read off the engine's own sharding code.

Torch engine: the model is built on the meta device and parallelized by `build_on_meta` (pipeline
stage, TP, FSDP2/HSDP/replication) under torch's fake process group (no communication, each rank's
shards computed as in a real run), and the bytes are read off the rank's local shards: fp32
parameters, fp32 gradients (the engine keeps gradients in the parameters' dtype), AdamW's two fp32
moments plus a step count per tensor, and the checkpoint shard it writes (its parameters and
optimizer state: every tensor is sharded, so no item is written twice).

DeepSpeed engine: ZeRO partitions its flat buffers inside `deepspeed.initialize`, which needs a
real process group and real memory, so it cannot run on meta tensors under a fake process group.
Its shares use ZeRO's partition arithmetic per stage instead (the same split `zero_memory_report`
reads off a live engine): stage 0 replicates everything; 1 partitions the optimizer state (and the
fp32 master weights of a bf16/fp16 run); 2 also the gradients; 3 also the parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor
from torch.testing._internal.distributed.fake_pg import FakeStore

from dist_llm.config import Config
from dist_llm.distributed.dims import NAMES
from dist_llm.engine.torch_engine import build_on_meta
from dist_llm.models import count_params

FP32 = 4
ADAM_STATE = 2 * FP32  # exp_avg and exp_avg_sq per element (+ one step count per tensor)


@dataclass
class RankShare:
    rank: int
    pp: int
    dp: int
    tp: int
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    checkpoint_bytes: int

    @property
    def total(self) -> int:
        return self.param_bytes + self.grad_bytes + self.optimizer_bytes


def _local_numel(t: torch.Tensor) -> int:
    return (t.to_local() if isinstance(t, DTensor) else t).numel()


def rank_share(cfg: Config, world: int, rank: int) -> RankShare:
    """What `rank` of `world` holds under `cfg`'s layout."""
    if cfg.engine.type == "deepspeed":
        return zero_share(cfg, world, rank)
    dist.init_process_group("fake", rank=rank, world_size=world, store=FakeStore())
    try:
        dims = cfg.engine.dims(world, rank)
        mesh = init_device_mesh("cpu", dims.shape, mesh_dim_names=NAMES)
        model, _, _ = build_on_meta(cfg, dims, mesh)
        params = list(model.parameters())  # each tied weight once
        numel = sum(_local_numel(p) for p in params)
        optimizer = numel * ADAM_STATE + FP32 * len(params)
        return RankShare(
            rank=rank,
            pp=dims.pp_rank,
            dp=dims.dp_rank,
            tp=dims.tp_rank,
            param_bytes=numel * FP32,
            grad_bytes=numel * FP32,
            optimizer_bytes=optimizer,
            checkpoint_bytes=numel * FP32 + optimizer,
        )
    finally:
        dist.destroy_process_group()


def zero_share(cfg: Config, world: int, rank: int) -> RankShare:
    """ZeRO's partition arithmetic: a flat buffer of n elements is padded to a multiple of `world`
    and split evenly, so each rank holds ceil(n / world) elements of every partitioned buffer."""
    n, stage = count_params(cfg.model), cfg.engine.zero_stage
    part = -(-n // world)
    mixed = cfg.train.precision in ("bf16", "fp16")
    element = 2 if mixed else FP32
    params = (part if stage == 3 else n) * element
    grads = (part if stage >= 2 else n) * element
    states = part if stage >= 1 else n
    optimizer = states * (ADAM_STATE + (FP32 if mixed else 0))  # moments (+ fp32 master weights)
    return RankShare(
        rank=rank,
        pp=0,
        dp=rank,
        tp=0,
        param_bytes=params,
        grad_bytes=grads,
        optimizer_bytes=optimizer,
        checkpoint_bytes=part * element + optimizer,
    )


def corner_ranks(cfg: Config, world: int) -> list[int]:
    """First and last rank of every pipeline stage, and one in the middle: the extremes of uneven
    shards (embedding on the first stage, head on the last, remainders on the last shard)."""
    dims = cfg.engine.dims(world)
    per_stage = world // dims.pp
    ranks = set()
    for stage in range(dims.pp):
        ranks |= {stage * per_stage, stage * per_stage + per_stage // 2, stage * per_stage + per_stage - 1}
    return sorted(ranks)


def loaded_ranks(cfg: Config, world: int) -> list[int]:
    """The most loaded ranks, for a quick check: the first rank of the first and of the last
    pipeline stage. FSDP2 splits each tensor into ceil-sized chunks, so the first data-parallel rank
    holds the largest shard; TP splits evenly; the first stage holds the embedding and (among
    equally good splits) the most layers, the last stage the head."""
    dims = cfg.engine.dims(world)
    return sorted({0, world - world // dims.pp})
