"""A real-scale layout laid out without real memory: for each rank, the model is built on the meta
device and parallelized by the engine's own code (`build_on_meta`: pipeline stage, TP, FSDP2) under
torch's fake process group (no communication, each rank's shards computed as in a real run), and
the bytes that rank would hold are read off its local shards. So "a 70B model on 512 GPUs fits" is
checked with the sharding code that would run, not with a separate formula.

Per rank: fp32 parameters, fp32 gradients (reduce_dtype=fp32), AdamW's two fp32 moments plus a step
count per tensor, and the checkpoint shard it writes (its parameters and optimizer state: every
tensor is sharded, so no item is written twice).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor
from torch.testing._internal.distributed.fake_pg import FakeStore

from dist_llm.config import Config, load_config
from dist_llm.distributed.dims import NAMES
from dist_llm.engine.torch_engine import build_on_meta
from dist_llm.models import count_params
from dist_llm.models.presets import load_preset

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


@dataclass
class DryRunResult:
    model: str
    params: int
    world: int
    layout: str
    ranks_checked: int
    even_split_bytes: float
    """(parameters + gradients + optimizer state) of the whole model / world size."""
    max_rank_bytes: int
    min_rank_bytes: int
    max_over_even: float
    max_param_bytes: int
    max_optimizer_bytes: int
    max_checkpoint_bytes: int
    seconds_per_rank: float
    shares: list[RankShare]


def _local_numel(t: torch.Tensor) -> int:
    return (t.to_local() if isinstance(t, DTensor) else t).numel()


def rank_share(cfg: Config, world: int, rank: int) -> RankShare:
    """What `rank` of `world` holds under `cfg`'s layout (fake process group, meta tensors)."""
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


def corner_ranks(cfg: Config, world: int) -> list[int]:
    """First and last rank of every pipeline stage, and one in the middle: the extremes of uneven
    shards (embedding on the first stage, head on the last, remainders on the last shard)."""
    dims = cfg.engine.dims(world)
    per_stage = world // dims.pp
    ranks = set()
    for stage in range(dims.pp):
        ranks |= {stage * per_stage, stage * per_stage + per_stage // 2, stage * per_stage + per_stage - 1}
    return sorted(ranks)


def dry_run(model: str, overrides: list[str], world: int, ranks: list[int] | None = None) -> DryRunResult:
    """`model`: a preset name or YAML path; `overrides`: engine/train keys (e.g. engine.tp=8)."""
    cfg = load_config(None, overrides)
    cfg.model = load_preset(model)
    cfg.validate(world_size=world)
    chosen = ranks if ranks is not None else corner_ranks(cfg, world)
    start = time.perf_counter()
    shares = [rank_share(cfg, world, r) for r in chosen]
    seconds = (time.perf_counter() - start) / len(chosen)
    n = count_params(cfg.model)
    even = n * (FP32 + FP32 + ADAM_STATE) / world
    totals = [s.total for s in shares]
    dims = cfg.engine.dims(world)
    return DryRunResult(
        model=model,
        params=n,
        world=world,
        layout=f"pp {dims.pp} x dp_replicate {dims.dp_replicate} x dp_shard {dims.dp_shard} x tp {dims.tp}",
        ranks_checked=len(shares),
        even_split_bytes=even,
        max_rank_bytes=max(totals),
        min_rank_bytes=min(totals),
        max_over_even=max(totals) / even,
        max_param_bytes=max(s.param_bytes for s in shares),
        max_optimizer_bytes=max(s.optimizer_bytes for s in shares),
        max_checkpoint_bytes=max(s.checkpoint_bytes for s in shares),
        seconds_per_rank=seconds,
        shares=shares,
    )


def format_table(results: list[DryRunResult]) -> str:
    gb = 1e9
    lines = [
        "model | params | ranks | layout | ranks checked | even split GB | max rank GB (params/optimizer/"
        "checkpoint shard) | min rank GB | max / even | s per rank",
        "---|---|---|---|---|---|---|---|---|---",
    ]
    for r in results:
        lines.append(
            f"{r.model} | {r.params / 1e9:.1f}B | {r.world} | {r.layout} | {r.ranks_checked} | "
            f"{r.even_split_bytes / gb:.2f} | {r.max_rank_bytes / gb:.2f} ({r.max_param_bytes / gb:.2f}/"
            f"{r.max_optimizer_bytes / gb:.2f}/{r.max_checkpoint_bytes / gb:.2f}) | "
            f"{r.min_rank_bytes / gb:.2f} | {r.max_over_even:.3f} | {r.seconds_per_rank:.2f}"
        )
    return "\n".join(lines)
