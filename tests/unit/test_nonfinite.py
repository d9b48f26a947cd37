"""Non-finite gradients: the step is skipped (weights and optimizer untouched), counted, and after
train.max_bad_steps in a row the run stops with a clear error or rolls back to the last checkpoint."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch

from dist_llm.callbacks.base import Callback
from dist_llm.callbacks.nonfinite import DivergenceError
from dist_llm.checkpoint import layout
from dist_llm.checkpoint.offline import model_tensors
from dist_llm.trainer import Trainer
from tests.conftest import make_trainer


class PoisonGrads(Callback):
    """Turns the gradients non-finite during the given steps, like an exploding update would."""

    def __init__(self, steps: set[int]) -> None:
        self.steps = steps

    def on_train_start(self, trainer: Trainer) -> None:
        param = trainer.engine.model.norm.weight
        param.register_hook(lambda g: g * math.nan if trainer.step + 1 in self.steps else g)


class Snapshot(Callback):
    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_step_end(self, trainer: Trainer, metrics: dict) -> None:
        self.weights[trainer.step] = {k: v.clone() for k, v in trainer.engine.model.state_dict().items()}


def test_bad_steps_are_skipped_then_the_run_stops(tmp_path, dataset, warnings_log):
    snap = Snapshot()
    trainer = make_trainer(tmp_path, dataset, ["train.max_bad_steps=3"], [PoisonGrads({4, 5, 6, 7, 8}), snap])
    with pytest.raises(
        DivergenceError,
        match=r"3 consecutive steps with non-finite.*last: step 6;.*"
        r"train.max_bad_steps=3",
    ):
        trainer.fit()
    assert trainer.step == 7  # a step's flag is read at the next step's end
    snap.weights[7] = trainer.engine.model.state_dict()  # the error came before Snapshot's hook
    for step in (4, 5, 6, 7):  # skipped steps leave every weight exactly as it was
        for name, value in snap.weights[step].items():
            assert torch.equal(value, snap.weights[3][name]), (step, name)
    assert "step 4: non-finite loss or gradients, step skipped (1 in a row" in warnings_log.text


def test_bad_last_step_is_counted_before_the_final_checkpoint(tmp_path, dataset, warnings_log):
    trainer = make_trainer(tmp_path, dataset, ["train.max_bad_steps=2"], [PoisonGrads({7, 8})])
    with pytest.raises(DivergenceError, match="last: step 8;"):
        trainer.fit()
    assert not os.path.exists(f"{tmp_path}/checkpoints"), "no checkpoint after the run diverged"


def test_rollback_restores_last_checkpoint_and_continues(tmp_path, dataset, warnings_log):
    snap = Snapshot()
    trainer = make_trainer(
        tmp_path,
        dataset,
        [
            "train.max_bad_steps=2",
            "train.on_bad_steps=rollback",
            "checkpoint.interval=2",
            "checkpoint.keep_last=10",
        ],
        [PoisonGrads({5, 6}), snap],
    )
    trainer.fit()
    assert trainer.step == 8
    ckpt4 = dict(model_tensors(layout.step_uri(f"{tmp_path}/checkpoints", 4)))
    # Steps 5 and 6 were skipped; step 6's flag, read at step 7's end, triggered the rollback (to
    # step 6's checkpoint, which skipped steps left equal to step 4's) and undid step 7's update.
    assert "continuing at step 7" in warnings_log.text
    for step in (6, 7):
        for name, value in ckpt4.items():
            assert torch.equal(snap.weights[step][name], value), (step, name)
    assert not torch.equal(snap.weights[8]["norm.weight"], ckpt4["norm.weight"]), "training went on"
    assert all(torch.isfinite(v).all() for v in snap.weights[8].values())
    assert "rolled back weights and optimizer to" in warnings_log.text


def test_signal_handlers_restored_when_fit_raises(tmp_path, dataset):
    """A run that dies must not leave its SIGTERM handler in the process (forked children would
    inherit it and ignore SIGTERM, e.g. a multiprocessing pool's terminate())."""
    before = signal.getsignal(signal.SIGTERM)
    trainer = make_trainer(tmp_path, dataset, ["train.max_bad_steps=1"], [PoisonGrads({2})])
    with pytest.raises(DivergenceError):
        trainer.fit()
    assert signal.getsignal(signal.SIGTERM) is before
