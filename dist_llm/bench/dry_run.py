"""A real-scale layout laid out without real memory: each rank's bytes of parameters, gradients,
optimizer state and checkpoint shard, from the engine's own sharding code on meta tensors under a
fake process group (`dist_llm.plan.shares`, which the planner uses too). So "a 70B model on 512 GPUs
fits" is checked with the sharding code that would run, not with a separate formula.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dist_llm.config import load_config
from dist_llm.models import count_params
from dist_llm.models.presets import load_preset
from dist_llm.plan.shares import ADAM_STATE, FP32, RankShare, corner_ranks, rank_share


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
