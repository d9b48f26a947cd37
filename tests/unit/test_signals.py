"""A stop signal, in process on one rank: the ranks' flags are summed without waiting and read a
step later, so the run stops one step after the signal was seen, or, on the last step, finishes,
commits its final checkpoint and still reports the preemption."""

from __future__ import annotations

import os
import signal

import pytest

from dist_llm.callbacks.base import Callback
from dist_llm.checkpoint.discovery import committed_steps
from dist_llm.trainer import Trainer
from tests.conftest import make_trainer


class SignalAfter(Callback):
    """Sends SIGUSR1 to this process at the end of `step`, after the preemption callback's turn."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer: Trainer, metrics: dict) -> None:
        if trainer.step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.mark.parametrize(
    "sent_after, stopped_at",
    [
        (2, 4),  # flag 0 summed at step 2's end, 1 at step 3's, read at step 4's
        (5, 6),  # 1 summed at the last step's end, read at train end
    ],
)
def test_signal_stops_commits_and_reports(tmp_path, dataset, sent_after, stopped_at):
    before = signal.getsignal(signal.SIGUSR1)
    trainer = make_trainer(
        tmp_path, dataset, ["train.max_steps=6", "checkpoint.interval=0"], [SignalAfter(sent_after)]
    )
    trainer.fit()
    assert trainer.step == stopped_at
    assert trainer.stop_requested, "the exit status must say preempted"
    assert committed_steps(f"{tmp_path}/checkpoints") == [stopped_at]
    assert signal.getsignal(signal.SIGUSR1) is before
