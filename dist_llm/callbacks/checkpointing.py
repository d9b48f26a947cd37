"""Saves at `checkpoint.interval` and at the end of training; the final save is waited for."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dist_llm.callbacks.base import Callback
from dist_llm.checkpoint.writer import CheckpointWriter
from dist_llm.errors import CheckpointError

if TYPE_CHECKING:
    from dist_llm.trainer import Trainer


class CheckpointCallback(Callback):
    def __init__(self) -> None:
        self.last_saved = -1
        self.writer: CheckpointWriter | None = None

    def _save(self, trainer: "Trainer") -> None:
        assert self.writer is not None
        blocked = self.writer.save(trainer.step, trainer.engine, trainer.state())
        self.last_saved = trainer.step
        trainer.emit({"step": trainer.step, "checkpoint_blocked_s": blocked,
                      "checkpoint_skipped": blocked is None})

    def on_train_start(self, trainer: "Trainer") -> None:
        self.writer = CheckpointWriter(trainer.cfg.checkpoint_dir, trainer.cfg.checkpoint, trainer.world)
        self.last_saved = trainer.step  # a resumed run already has this step on storage

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        interval = trainer.cfg.checkpoint.interval
        if interval and trainer.step % interval == 0:
            self._save(trainer)

    def on_train_end(self, trainer: "Trainer") -> None:
        if self.last_saved != trainer.step:
            self._save(trainer)
        assert self.writer is not None
        self.writer.wait()
        if self.last_saved in self.writer.failed_steps:
            raise CheckpointError(f"the final checkpoint (step {self.last_saved}) failed to commit; "
                                  "see the error above. The previous committed checkpoint is intact.")
