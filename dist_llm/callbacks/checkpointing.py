"""Saves at `checkpoint.interval` and at the end of training; the final save is waited for.

Saves finish in the background, so their outcome is reported later, from the main thread (sinks
are not thread-safe): after every step, each newly committed or failed checkpoint becomes a record
at the current step.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from dist_llm.callbacks.base import Callback
from dist_llm.checkpoint import layout
from dist_llm.checkpoint.writer import CheckpointWriter
from dist_llm.errors import CheckpointError
from dist_llm.metrics.phases import CHECKPOINT, phase

if TYPE_CHECKING:
    from dist_llm.trainer import Trainer


class CheckpointCallback(Callback):
    def __init__(self) -> None:
        self.last_saved = -1
        self.writer: CheckpointWriter | None = None
        self.started: dict[int, float] = {}
        """Rank 0: save start time per checkpoint step whose outcome is not reported yet."""

    def _save(self, trainer: "Trainer") -> None:
        assert self.writer is not None
        start = time.perf_counter()
        with phase(CHECKPOINT, trainer.world.device):
            blocked = self.writer.save(trainer.step, trainer.engine, trainer.state())
        self.last_saved = trainer.step
        if trainer.world.is_main and (blocked is not None or trainer.step in self.writer.failed_steps):
            self.started[trainer.step] = start  # not for a skipped save: it has no outcome
        trainer.emit(
            {"step": trainer.step, "checkpoint_blocked_s": blocked, "checkpoint_skipped": blocked is None}
        )

    def _report_outcomes(self, trainer: "Trainer") -> None:
        """On rank 0, which commits (and alone writes the sinks). `checkpoint_save_s` runs until
        the loop noticed the commit: at most one step late."""
        assert self.writer is not None
        for step in [s for s in self.writer.committed_steps if s in self.started]:
            trainer.emit(
                {
                    "step": trainer.step,
                    "checkpoint_committed": step,
                    "checkpoint_uri": layout.step_uri(trainer.cfg.checkpoint_dir, step),
                    "checkpoint_save_s": time.perf_counter() - self.started.pop(step),
                }
            )
        for step in [s for s in self.writer.failed_steps if s in self.started]:
            del self.started[step]
            trainer.emit({"step": trainer.step, "checkpoint_failed": step})

    def on_train_start(self, trainer: "Trainer") -> None:
        self.writer = CheckpointWriter(trainer.cfg.checkpoint_dir, trainer.cfg.checkpoint, trainer.world)
        self.last_saved = trainer.step  # a resumed run already has this step on storage

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        interval = trainer.cfg.checkpoint.interval
        if interval and trainer.step % interval == 0:
            self._save(trainer)
        self._report_outcomes(trainer)

    def on_train_end(self, trainer: "Trainer") -> None:
        if self.last_saved != trainer.step:
            self._save(trainer)
        assert self.writer is not None
        with phase(CHECKPOINT, trainer.world.device):
            self.writer.wait()
        self._report_outcomes(trainer)
        if self.last_saved in self.writer.failed_steps:
            raise CheckpointError(
                f"the final checkpoint (step {self.last_saved}) failed to commit; "
                "see the error above. The previous committed checkpoint is intact."
            )
