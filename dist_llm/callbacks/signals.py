"""Preemption: SIGTERM / SIGUSR1 (what SLURM and Kubernetes send before a kill or time limit)
finish the current step (or the next: see `on_step_end`), save and commit a checkpoint, and exit
with `EXIT_PREEMPTED` so the launcher or sbatch script knows to requeue; `--resume auto` then
continues exactly."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

import torch

from dist_llm.callbacks.base import Callback
from dist_llm.callbacks.deferred import DeferredRead
from dist_llm.distributed import all_reduce_sum_async
from dist_llm.log import get_logger

if TYPE_CHECKING:
    from dist_llm.trainer import Trainer

log = get_logger("signals")

EXIT_PREEMPTED = 143  # 128 + SIGTERM: the conventional "terminated" status, checked by launch scripts
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionCallback(Callback):
    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._agreed: DeferredRead | None = None
        """The sum over ranks of the stop flags as they were at the previous step's end."""

    def _handle(self, signum: int, frame: object) -> None:
        # Only record it: the step in progress finishes, and all ranks stop at the same step.
        self.received = signum

    def _stop_agreed(self) -> bool:
        """Whether any rank had a signal at the previous step's end (False if nothing is pending)."""
        agreed, self._agreed = self._agreed, None
        return agreed is not None and agreed.item() > 0

    def _stop(self, trainer: "Trainer") -> None:
        log.warning(
            "stop signal received: saving a checkpoint at step %d and exiting with %d",
            trainer.step,
            EXIT_PREEMPTED,
        )
        trainer.stop_requested = True

    def on_train_start(self, trainer: "Trainer") -> None:
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        # A signal may reach some ranks before others (or only one); agree before stopping. The sum
        # started at the previous step's end is read now, so no step waits for its collective (nor,
        # on CUDA, for the device); every rank reads the same sum at the same step and stops there.
        if self._stop_agreed():
            self._stop(trainer)
            return
        flag = torch.full((1,), 1.0 if self.received else 0.0, device=trainer.world.device)
        self._agreed = DeferredRead(flag, all_reduce_sum_async(flag))

    def on_train_end(self, trainer: "Trainer") -> None:
        # The run reached its last step with a sum in flight: a signal during that step still makes
        # the exit say "preempted" (the final checkpoint is written either way).
        if self._stop_agreed():
            self._stop(trainer)

    def close(self, trainer: "Trainer") -> None:
        # After an error: finish the collective every rank started, so none is left outstanding.
        self._stop_agreed()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
