"""Preemption: SIGTERM / SIGUSR1 (what SLURM and Kubernetes send before a kill or time limit)
finish the current step, save and commit a checkpoint, and exit with `EXIT_PREEMPTED` so the
launcher or sbatch script knows to requeue; `--resume auto` then continues exactly."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

import torch

from dist_llm.callbacks.base import Callback
from dist_llm.distributed import all_reduce_sum
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

    def _handle(self, signum: int, frame: object) -> None:
        # Only record it: the step in progress finishes, and all ranks stop at the same step.
        self.received = signum

    def on_train_start(self, trainer: "Trainer") -> None:
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        # A signal may reach some ranks before others (or only one); agree before stopping.
        flag = torch.tensor([1.0 if self.received else 0.0], device=trainer.world.device)
        if all_reduce_sum(flag).item() > 0:
            log.warning("stop signal received: saving a checkpoint at step %d and exiting with %d",
                        trainer.step, EXIT_PREEMPTED)
            trainer.stop_requested = True

    def close(self, trainer: "Trainer") -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
