"""TensorBoard logging: the event files under <run_dir>/tensorboard are read back and must hold every
number of metrics.jsonl at its step (as float32); resumed runs continue one timeline in which the
steps a crashed run logged past its checkpoint are replaced, never duplicated."""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

from dist_llm.callbacks import Callback
from dist_llm.config import load_config
from dist_llm.errors import ConfigError
from dist_llm.metrics.sinks import grouped_key
from dist_llm.metrics.tensorboard_sink import TENSORBOARD_DIR
from tests.conftest import make_trainer, read_metrics, run_train

TENSORBOARD = ["logging.tensorboard.enabled=true"]


def read_scalars(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    """Tag -> (step, value) as TensorBoard shows them: all event files in order, purges applied."""
    events = EventAccumulator(os.path.join(run_dir, TENSORBOARD_DIR), size_guidance={SCALARS: 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()[SCALARS]}


def expected_scalars(runs: list[tuple[int, list[dict[str, Any]]]]) -> dict[str, list[tuple[int, float]]]:
    """What the event files must hold, from the metrics.jsonl records of each run, oldest first, with
    the step from which the run logs anew: each run replaces the earlier runs' values from there on."""
    timeline: dict[str, list[tuple[int, float]]] = {}
    for first_step, records in runs:
        timeline = {tag: [(s, v) for s, v in points if s < first_step] for tag, points in timeline.items()}
        for r in records:
            for k, v in r.items():
                if k != "step" and isinstance(v, (int, float)):
                    timeline.setdefault(grouped_key(k), []).append((r["step"], float(np.float32(v))))
    return {tag: points for tag, points in timeline.items() if points}


def steps(scalars: dict[str, list[tuple[int, float]]], tag: str) -> list[int]:
    return [s for s, _ in scalars[tag]]


def test_event_files_hold_every_number_of_metrics_jsonl(tmp_path, dataset):
    run_dir = str(tmp_path / "tb-run")
    run_train(
        run_dir,
        dataset,
        [
            *TENSORBOARD,
            "train.max_steps=4",
            "train.eval_interval=2",
            "checkpoint.interval=2",
            "checkpoint.async_save=false",
        ],
    )
    records = read_metrics(run_dir)
    scalars = read_scalars(run_dir)
    assert scalars == expected_scalars([(0, records)])
    assert steps(scalars, "train/loss") == [1, 2, 3, 4]
    assert steps(scalars, "eval/val_loss") == [0, 2, 4]
    assert [v for _, v in scalars["checkpoint/committed"]] == [2.0, 4.0]
    assert all(v > 0 for _, v in scalars["memory/rss_bytes"])
    assert "checkpoint/uri" not in scalars  # a string: no chart


class CrashAfterLogging(Callback):
    """Fails the run after `step` was logged (the trainer runs it after the metrics callback)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, metrics: dict[str, Any]) -> None:
        if trainer.step == self.step:
            raise RuntimeError(f"injected crash at step {self.step}")


def test_resumed_runs_continue_one_timeline_without_duplicated_steps(tmp_path, dataset):
    run_dir = str(tmp_path / "resumed")
    common = [*TENSORBOARD, "train.max_steps=4", "checkpoint.interval=2"]
    resume = [*common, "checkpoint.resume=auto"]

    def records_of(run) -> list[dict[str, Any]]:
        before = len(read_metrics(run_dir)) if os.path.exists(os.path.join(run_dir, "metrics.jsonl")) else 0
        run()
        return read_metrics(run_dir)[before:]

    stopped = records_of(lambda: make_trainer(run_dir, dataset, [*common, "train.exit_at_step=2"], []).fit())

    def crash() -> None:
        with pytest.raises(RuntimeError, match="injected crash"):
            make_trainer(run_dir, dataset, resume, [CrashAfterLogging(3)]).fit()

    crashed = records_of(crash)  # step 3 logged, never checkpointed: the next run trains it again
    finished = records_of(lambda: make_trainer(run_dir, dataset, resume, []).fit())
    assert [r["step"] for r in crashed if "loss" in r] == [3]
    assert [r["step"] for r in finished if "loss" in r] == [3, 4]

    scalars = read_scalars(run_dir)
    assert scalars == expected_scalars([(0, stopped), (3, crashed), (3, finished)])
    assert all(steps(scalars, tag) == sorted(set(steps(scalars, tag))) for tag in scalars)
    assert steps(scalars, "train/loss") == [1, 2, 3, 4]
    # The step-3 values are the finishing run's (its step time differs from the crashed run's).
    assert scalars["train/step_time_s"][2][1] == np.float32(finished[0]["step_time_s"])

    # A run from step 0 in the same directory is a new experiment: the timeline starts over.
    fresh = records_of(lambda: make_trainer(run_dir, dataset, [*common, "train.max_steps=1"], []).fit())
    scalars = read_scalars(run_dir)
    assert scalars == expected_scalars([(0, fresh)])
    assert steps(scalars, "train/loss") == [1]


def test_enabled_without_the_tensorboard_package_fails_before_training(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    cfg = load_config(None, TENSORBOARD)
    with pytest.raises(ConfigError, match="logging.tensorboard.enabled=true needs the tensorboard package"):
        cfg.validate()
    load_config(None, []).validate()  # disabled: not needed
