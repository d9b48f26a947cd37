"""The root of the config tree (`Config`): its sections, where each value came from, and the checks
across sections."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from dist_llm.config.sections import (
    CheckpointConfig,
    DataConfig,
    DistillConfig,
    EngineConfig,
    EvalConfig,
    LaunchConfig,
    LoggingConfig,
    OptimConfig,
    TrainConfig,
)
from dist_llm.errors import ConfigError
from dist_llm.models.config import ModelConfig


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    @property
    def checkpoint_dir(self) -> str:
        return self.checkpoint.dir or os.path.join(self.logging.run_dir, "checkpoints")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def where(self, key: str, default: str = "config") -> str:
        """File:line (or override) that set `key`, for error messages. A key inside a list item
        (`data.sources[1].weight`) falls back to its item, then to the list (set by one override)."""
        sources = getattr(self, "_sources", {})
        while key not in sources and "[" in key:
            key = key.rsplit(".", 1)[0] if key.rfind(".") > key.rfind("]") else key[: key.rindex("[")]
        return sources.get(key, default)

    def validate(self, world_size: int | None = None, origin: str = "config") -> None:
        """Every section's checks, then the ones across sections; `world_size` defaults to
        launch.nproc_per_node * launch.nnodes."""
        world = world_size or self.launch.nproc_per_node * self.launch.nnodes
        t = self.train

        def fail(key: str, message: str) -> None:
            raise ConfigError(f"{self.where(key, origin)}: {message}")

        for section in (self.train, self.optim, self.checkpoint, self.launch, self.logging.tensorboard):
            section.validate(fail)
        try:
            self.model.validate(require_vocab=False)
        except ConfigError as e:
            raise ConfigError(f"{origin}: {e}") from None
        self.engine.validate(fail, world, self.model, self.data.seq_len, t.precision)
        self.data.validate(fail, self.model.arch)
        self.eval.validate(fail, self.model.arch)
        self.distill.validate(fail, self.engine)
        dp = self.engine.dims(world).dp
        if t.global_batch_size % (t.micro_batch_size * dp) != 0:
            fail(
                "train.global_batch_size",
                f"train.global_batch_size={t.global_batch_size} is not divisible by "
                f"train.micro_batch_size={t.micro_batch_size} x {dp} data-parallel ranks; "
                f"pick a global batch that is a multiple of {t.micro_batch_size * dp}",
            )
        if self.data.seq_len > self.model.max_seq_len:
            fail(
                "data.seq_len",
                f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}",
            )
