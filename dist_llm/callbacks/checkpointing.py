"""Saves at `checkpoint.interval` and at the end of training (or when a stop was requested)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dist_llm.callbacks.base import Callback
from dist_llm.checkpoint.state import save_checkpoint

if TYPE_CHECKING:
    from dist_llm.trainer import Trainer


class CheckpointCallback(Callback):
    def __init__(self) -> None:
        self.last_saved = -1

    def _save(self, trainer: "Trainer") -> None:
        save_checkpoint(trainer.cfg.checkpoint_dir, trainer.step, trainer.engine, trainer.state(),
                        trainer.world, trainer.cfg.checkpoint.keep_last)
        self.last_saved = trainer.step

    def on_train_start(self, trainer: "Trainer") -> None:
        self.last_saved = trainer.step  # a resumed run already has this step on storage

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        interval = trainer.cfg.checkpoint.interval
        if interval and trainer.step % interval == 0:
            self._save(trainer)

    def on_train_end(self, trainer: "Trainer") -> None:
        if self.last_saved != trainer.step:
            self._save(trainer)
