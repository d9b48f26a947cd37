"""Engines behind one interface (`Engine`); `build_engine` picks the one the config names."""

from __future__ import annotations

from torch import nn

from dist_llm.config import Config
from dist_llm.distributed import World
from dist_llm.engine.base import Engine


def build_engine(model: nn.Module, cfg: Config, world: World) -> Engine:
    if cfg.engine.type == "ddp":
        from dist_llm.engine.ddp import DDPEngine

        return DDPEngine(model, cfg, world)
    raise ValueError(f"engine.type={cfg.engine.type!r} is not implemented")
