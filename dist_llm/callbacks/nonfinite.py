"""Non-finite loss or gradients: the engine skips the step; this counts them, and after
`train.max_bad_steps` in a row stops the run or rolls back to the last committed checkpoint.

A step's skip flag is read at the next step's end (the engines decide on the device, and
reading the flag at once would wait for the step in flight), so the run stops or rolls back one
step after the step that made the count; messages name the bad step itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from dist_llm.callbacks.base import Callback
from dist_llm.callbacks.deferred import DeferredRead
from dist_llm.errors import DistLLMError
from dist_llm.log import get_logger

if TYPE_CHECKING:
    from dist_llm.trainer import Trainer

log = get_logger("trainer")


class DivergenceError(DistLLMError):
    """Training produced non-finite values for too many steps in a row."""


class NonFiniteCallback(Callback):
    def __init__(self) -> None:
        self.consecutive = 0
        self.total = 0
        self._pending: tuple[int, DeferredRead] | None = None
        """The last step not counted yet, and its skip flag."""

    def state_dict(self) -> dict[str, Any]:
        return {"consecutive": self.consecutive, "total": self.total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consecutive = state.get("consecutive", 0)
        self.total = state.get("total", 0)

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        previous = self._pending
        self._pending = (trainer.step, DeferredRead(torch.as_tensor(metrics["skipped"])))
        if previous is not None:
            self._count(trainer, *previous)
        # On the last step (the preemption callback runs first, so a stop it requests is seen) read
        # the flag now: that step logs and saves anyway, and a stop or rollback precedes its save.
        if trainer.stop_requested or trainer.step >= trainer.stop_step:
            self._flush(trainer)

    def on_train_end(self, trainer: "Trainer") -> None:
        self._flush(trainer)  # a stop requested by a callback after this one

    def _flush(self, trainer: "Trainer") -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self._count(trainer, *pending)

    def _count(self, trainer: "Trainer", step: int, skipped: DeferredRead) -> None:
        if not skipped.item():
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total += 1
        limit = trainer.cfg.train.max_bad_steps
        log.warning(
            "step %d: non-finite loss or gradients, step skipped (%d in a row, %d in total)",
            step,
            self.consecutive,
            self.total,
        )
        if self.consecutive < limit:
            return
        if trainer.cfg.train.on_bad_steps == "stop":
            raise DivergenceError(
                f"{limit} consecutive steps with non-finite loss/gradients (last: step {step}; "
                f"train.max_bad_steps={limit}). Lower optim.lr, raise optim.warmup_steps or check the data; "
                "resume from the last committed checkpoint with --resume auto, or set "
                "train.on_bad_steps=rollback to roll back automatically"
            )
        if not trainer.rollback():
            raise DivergenceError(
                f"{limit} consecutive non-finite steps and no committed checkpoint to roll back to"
            )
        self.consecutive = 0
        self._pending = None  # the step after `step` ran on the weights just replaced: not theirs
