"""Callback hooks the trainer calls; subclasses override what they need."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dist_llm.trainer import Trainer


class Callback:
    def on_train_start(self, trainer: "Trainer") -> None:
        pass

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        """`metrics` holds tensors still on device; reading them costs a host sync, so only at log steps."""

    def on_metrics(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        """A finished record of plain numbers to log (training step or validation result)."""

    def on_train_end(self, trainer: "Trainer") -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        """What must survive a resume (saved in the checkpoint's trainer.json): plain JSON values."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def close(self, trainer: "Trainer") -> None:
        """Always called when `fit` returns or raises: undo process-wide changes (signal handlers)."""
