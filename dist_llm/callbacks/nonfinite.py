"""Non-finite loss or gradients: the engine skips the step; this counts them, and after
`train.max_bad_steps` in a row stops the run or rolls back to the last committed checkpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dist_llm.callbacks.base import Callback
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

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        if not metrics["skipped"]:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total += 1
        limit = trainer.cfg.train.max_bad_steps
        log.warning("step %d: non-finite loss or gradients, step skipped (%d in a row, %d in total)",
                    trainer.step, self.consecutive, self.total)
        if self.consecutive < limit:
            return
        if trainer.cfg.train.on_bad_steps == "stop":
            raise DivergenceError(
                f"{limit} consecutive steps with non-finite loss/gradients (last: step {trainer.step}; "
                f"train.max_bad_steps={limit}). Lower optim.lr, raise optim.warmup_steps or check the data; "
                "resume from the last committed checkpoint with --resume auto, or set "
                "train.on_bad_steps=rollback to roll back automatically")
        if not trainer.rollback():
            raise DivergenceError(f"{limit} consecutive non-finite steps and no committed checkpoint "
                                  "to roll back to")
        self.consecutive = 0
