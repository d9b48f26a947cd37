"""The trainer's own bookkeeping, in process on one rank."""

from __future__ import annotations

from tests.conftest import make_trainer


def test_history_holds_the_initial_evaluation_and_every_step(tmp_path, dataset):
    trainer = make_trainer(tmp_path, dataset, ["train.max_steps=4", "train.eval_interval=2"], [])
    history = trainer.fit()
    assert [r["step"] for r in history if "val_loss" in r] == [0, 2, 4]
    assert [r["step"] for r in history if "loss" in r] == [1, 2, 3, 4]
