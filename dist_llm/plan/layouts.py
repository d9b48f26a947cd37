"""Candidate layouts of a run on a given number of ranks, each applied to a copy of the config and
kept only if the config's own validation accepts it (TP dividing heads, KV heads, vocabulary and
sequence; PP no deeper than the model; the global batch dividing into micro-batches per
data-parallel rank; offload needing data-parallel ranks; and so on). No divisibility rule is
restated here."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from dist_llm.config import Config
from dist_llm.errors import ConfigError


@dataclass(frozen=True)
class Layout:
    pp: int
    dp_replicate: int
    dp_shard: int
    tp: int
    micro_batch: int
    activation_checkpointing: bool
    cpu_offload: bool
    zero_stage: int | None = None
    """DeepSpeed's ZeRO stage (a DeepSpeed config); None for the torch engine."""

    @property
    def dp(self) -> int:
        return self.dp_replicate * self.dp_shard

    def overrides(self) -> list[str]:
        """The config keys that select this layout (for `dist-llm train`)."""
        if self.zero_stage is not None:  # DeepSpeed: its layout is the config's; only the batch varies
            return [f"train.micro_batch_size={self.micro_batch}"]
        keys = [
            f"engine.dp_shard={self.dp_shard}",
            f"engine.dp_replicate={self.dp_replicate}",
            f"engine.tp={self.tp}",
            f"engine.pp={self.pp}",
            f"train.micro_batch_size={self.micro_batch}",
        ]
        if self.activation_checkpointing:
            keys.append("engine.activation_checkpointing=true")
        if self.cpu_offload:
            keys.append("engine.cpu_offload=true")
        return keys

    def label(self) -> str:
        if self.zero_stage is not None:
            return f"zero{self.zero_stage} x {self.dp}"
        parts = [f"pp{self.pp}"] if self.pp > 1 else []
        if self.dp_replicate > 1:
            parts.append(f"rep{self.dp_replicate}")
        if self.dp_shard > 1:
            parts.append(f"fsdp{self.dp_shard}")
        if self.tp > 1:
            parts.append(f"tp{self.tp}")
        return " x ".join(parts) or "1 rank"


def configured_layout(cfg: Config, world: int) -> Layout:
    """The layout `cfg` asks for on `world` ranks (DeepSpeed: every rank data-parallel)."""
    dims = cfg.engine.dims(world)
    return Layout(
        pp=dims.pp,
        dp_replicate=dims.dp_replicate,
        dp_shard=dims.dp_shard,
        tp=dims.tp,
        micro_batch=cfg.train.micro_batch_size,
        activation_checkpointing=cfg.engine.activation_checkpointing,
        cpu_offload=cfg.engine.cpu_offload
        or "cpu" in (cfg.engine.offload_optimizer, cfg.engine.offload_params),
        zero_stage=cfg.engine.zero_stage if cfg.engine.type == "deepspeed" else None,
    )


def with_layout(cfg: Config, layout: Layout) -> Config:
    """A copy of `cfg` set to `layout` (torch engine)."""
    out = copy.deepcopy(cfg)
    e = out.engine
    e.pp, e.dp_replicate, e.dp_shard, e.tp = layout.pp, layout.dp_replicate, layout.dp_shard, layout.tp
    e.activation_checkpointing, e.cpu_offload = layout.activation_checkpointing, layout.cpu_offload
    out.train.micro_batch_size = layout.micro_batch
    return out


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_layouts(cfg: Config, world: int, ranks_per_node: int, max_pp: int = 8) -> list[Layout]:
    """Every layout of the torch engine on `world` ranks that the config validation accepts, with
    these rules of thumb on top: TP stays inside a node (at most `ranks_per_node`), PP has at most
    `max_pp` stages, data parallelism is FSDP over all its ranks, HSDP sharded within one node's
    worth of ranks (tp x dp_shard = ranks per node) or plain replication; micro-batches are the
    divisors of each rank's share of the global batch; activation checkpointing and CPU offload
    each on and off."""
    base = cfg.train.global_batch_size
    out = []
    for tp in _divisors(min(world, ranks_per_node)):
        for pp in _divisors(world // tp):
            if pp > max_pp or world % (tp * pp):
                continue
            dp = world // (tp * pp)
            replicas = {1, dp}
            if ranks_per_node % tp == 0 and dp % (ranks_per_node // tp) == 0:
                replicas.add(dp // (ranks_per_node // tp))
            for dp_replicate in sorted(replicas):
                dp_shard = dp // dp_replicate
                if base % dp:
                    continue
                for mb in _divisors(base // dp):
                    for ac in (False, True):
                        for offload in (False, True):
                            layout = Layout(pp, dp_replicate, dp_shard, tp, mb, ac, offload)
                            if _valid(cfg, layout, world):
                                out.append(layout)
    return out


def _valid(cfg: Config, layout: Layout, world: int) -> bool:
    try:
        with_layout(cfg, layout).validate(world_size=world)
    except ConfigError:
        return False
    return True
