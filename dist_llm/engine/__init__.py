"""Engines behind one interface (`Engine`); `build_engine` picks the one the config names.

- ddp with tp = pp = 1: `DDPEngine` (torch DistributedDataParallel).
- ddp with tp or pp > 1: `MeshEngine`, torch-native DP x TP x PP over a device mesh.
- deepspeed: `DeepSpeedEngine` (ZeRO 0-3, CPU/NVMe offload).
"""

from __future__ import annotations

from torch import nn

from dist_llm.config import Config
from dist_llm.distributed import World
from dist_llm.engine.base import Engine


def build_engine(model: nn.Module, cfg: Config, world: World) -> Engine:
    if cfg.engine.type == "deepspeed":
        from dist_llm.engine.deepspeed_engine import DeepSpeedEngine

        _checkpoint_and_compile(model, cfg)
        return DeepSpeedEngine(model, cfg, world)
    if cfg.engine.tp > 1 or cfg.engine.pp > 1:
        from dist_llm.engine.mesh import MeshEngine

        return MeshEngine(model, cfg, world)
    from dist_llm.engine.ddp import DDPEngine

    _checkpoint_and_compile(model, cfg)
    return DDPEngine(model, cfg, world)


def _checkpoint_and_compile(model: nn.Module, cfg: Config) -> None:
    """What `parallelize` does after TP, for engines without a mesh (DDP, DeepSpeed), in its order."""
    from dist_llm.parallel import apply_activation_checkpointing, apply_compile

    if cfg.engine.activation_checkpointing:
        apply_activation_checkpointing(model)
    if cfg.engine.compile:
        apply_compile(model)
