"""Engines behind one interface (`Engine`); `build_engine` picks the one the config names.

- torch: `TorchEngine`, every FSDP2/HSDP/DP x TP x PP layout, built on the meta device.
- deepspeed: `DeepSpeedEngine` (ZeRO 0-3, CPU/NVMe offload).

Each engine builds the model itself, so it can build it without memory and materialize only what
the rank holds.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from dist_llm.config import Config
from dist_llm.distributed import World
from dist_llm.distributed.materialize import FullTensor
from dist_llm.engine.base import Engine


def build_engine(
    cfg: Config,
    world: World,
    pretrained: FullTensor | None = None,
    prepare: Callable[[nn.Module], None] | None = None,
) -> Engine:
    """`pretrained`: full weights by name to start from (else initialized from train.seed);
    `prepare`: called with the bare model before it is parallelized (e.g. to attach a teacher)."""
    if cfg.engine.type == "deepspeed":
        from dist_llm.engine.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(cfg, world, pretrained, prepare)
    from dist_llm.engine.torch_engine import TorchEngine

    return TorchEngine(cfg, world, pretrained, prepare)
