"""The planner: every candidate layout of a run, with each rank's memory by component (training
state from the engine's sharding code, the rest by formula) and the estimated step time, tokens/s
and MFU; sorted by tokens/s, the layouts that fit first."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace

import torch

from dist_llm.config import Config
from dist_llm.errors import ConfigError
from dist_llm.plan.hardware import GB, Hardware, hardware
from dist_llm.plan.layouts import Layout, candidate_layouts, configured_layout, with_layout
from dist_llm.plan.memory import MemoryEstimate, estimate_memory
from dist_llm.plan.shares import RankShare, corner_ranks, loaded_ranks, rank_share
from dist_llm.plan.step_time import TimeEstimate, estimate_time
from dist_llm.precision import choose_precision, native_bf16


@dataclass
class Estimate:
    layout: Layout
    memory: MemoryEstimate
    """The most loaded rank checked (largest device total)."""
    time: TimeEstimate
    fits: bool
    available_bytes: float

    def why_not(self) -> str:
        """What exceeds the device memory, largest component first."""
        parts = sorted(self.memory.components().items(), key=lambda kv: -kv[1])
        detail = ", ".join(f"{k} {v / GB:.2f}" for k, v in parts if v > 0)
        return (
            f"needs {self.memory.device_total / GB:.2f} GB on rank {self.memory.rank} "
            f"({detail}) > {self.available_bytes / GB:.2f} GB available"
        )


@dataclass
class Plan:
    world: int
    ranks_per_node: int
    precision: str
    hardware: Hardware
    estimates: list[Estimate]
    share_seconds: float
    """Time spent building layouts on meta tensors under the fake process group."""


def plan_precision(cfg: Config, hw: Hardware) -> str:
    """The compute dtype a run would get on `hw` (train.precision=auto: bf16 on GPUs, and on CPUs
    with native bf16)."""
    native = native_bf16(torch.device("cpu")) if hw.is_cpu else True
    return choose_precision(cfg.train.precision, native, None)


class ShareCache:
    """Rank shares by (layout's sharding degrees, rank): micro-batch, checkpointing and offload do
    not change what a rank holds, so each distinct sharding is built once."""

    def __init__(self) -> None:
        self._shares: dict[tuple, RankShare] = {}
        self.seconds = 0.0

    def get(self, cfg: Config, world: int, rank: int) -> RankShare:
        e = cfg.engine
        key = (e.type, e.pp, e.dp_replicate, e.dp_shard, e.tp, e.zero_stage, rank)
        if key not in self._shares:
            start = time.perf_counter()
            self._shares[key] = rank_share(cfg, world, rank)
            self.seconds += time.perf_counter() - start
        return self._shares[key]


def estimate_layout(
    cfg: Config,
    layout: Layout,
    world: int,
    ranks_per_node: int,
    hw: Hardware,
    precision: str,
    shares: ShareCache,
    ranks: list[int],
) -> Estimate:
    """Memory (the most loaded of `ranks`) and time of `layout`; `cfg` already set to it."""
    memories = [estimate_memory(cfg, layout, shares.get(cfg, world, r), world, precision, hw) for r in ranks]
    memory = max(memories, key=lambda mem: mem.device_total)
    return Estimate(
        layout=layout,
        memory=memory,
        time=estimate_time(cfg, layout, world, ranks_per_node, precision, hw),
        fits=memory.device_total <= hw.memory_bytes,
        available_bytes=hw.memory_bytes,
    )


def plan(
    cfg: Config,
    nodes: int,
    ranks_per_node: int,
    kind: str,
    max_pp: int = 8,
    efficiency: float | None = None,
    inter_gbps: float | None = None,
) -> Plan:
    """Every candidate layout of `cfg`'s model and batch on `nodes` x `ranks_per_node` devices of
    `kind` (the torch engine's layouts; a DeepSpeed config is estimated as configured, with each
    micro-batch size that divides its batch). `efficiency` (the share of peak FLOPs compute
    reaches, e.g. one device's measured MFU) and `inter_gbps` replace the device kind's assumption."""
    world = nodes * ranks_per_node
    cfg = copy.deepcopy(cfg)
    cfg.launch.nnodes, cfg.launch.nproc_per_node = nodes, ranks_per_node
    hw = hardware(kind, ranks_per_node, cfg.logging.peak_tflops)
    if efficiency:
        hw = replace(hw, efficiency=efficiency)
    if inter_gbps:
        hw = replace(hw, inter_gbps=inter_gbps)
    precision = plan_precision(cfg, hw)
    cfg.train.precision = precision
    shares = ShareCache()
    if cfg.engine.type == "deepspeed":
        cfg.validate(world_size=world)
        per_rank = cfg.train.global_batch_size // world
        layouts = []
        for mb in (d for d in range(1, per_rank + 1) if per_rank % d == 0):
            with_mb = copy.deepcopy(cfg)
            with_mb.train.micro_batch_size = mb
            layouts.append((with_mb, configured_layout(with_mb, world)))
    else:
        layouts = [
            (with_layout(cfg, lay), lay)
            for lay in candidate_layouts(cfg, world, ranks_per_node, max_pp)
            if not (lay.cpu_offload and hw.is_cpu)  # offloading to the host a CPU run is on: no change
        ]
    if not layouts:
        # A check that no layout can satisfy (a key of another section) says so itself.
        fsdp = Layout(1, 1, world, 1, cfg.train.micro_batch_size, False, False)
        with_layout(cfg, fsdp).validate(world_size=world)
        raise ConfigError(
            f"no layout of this config fits the config checks on {world} ranks (global batch "
            f"{cfg.train.global_batch_size}, {cfg.model.n_heads} heads, {cfg.model.n_layers} layers)"
        )
    estimates = [
        estimate_layout(c, lay, world, ranks_per_node, hw, precision, shares, loaded_ranks(c, world))
        for c, lay in layouts
    ]
    estimates.sort(
        key=lambda est: (not est.fits, -est.time.tokens_per_s if est.fits else est.memory.device_total)
    )
    return Plan(
        world=world,
        ranks_per_node=ranks_per_node,
        precision=precision,
        hardware=hw,
        estimates=estimates,
        share_seconds=shares.seconds,
    )


def check_layout(cfg: Config, world: int, ranks_per_node: int, hw: Hardware) -> Estimate:
    """The configured layout's estimate over every corner rank (first, middle, last of each
    pipeline stage): what the fit check before a launch compares with the device memory."""
    cfg = copy.deepcopy(cfg)
    precision = plan_precision(cfg, hw)
    cfg.train.precision = precision
    ranks = corner_ranks(cfg, world) if cfg.engine.type == "torch" else [0]
    layout = configured_layout(cfg, world)
    return estimate_layout(cfg, layout, world, ranks_per_node, hw, precision, ShareCache(), ranks)
