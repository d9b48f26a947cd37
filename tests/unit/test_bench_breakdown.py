"""The step-time breakdown behind `dist-llm bench train`: interval arithmetic, a real profiled run
on 1 and 2 ranks, and a default run that records nothing and trains the same bits."""

from __future__ import annotations

import json
import os

import pytest

from dist_llm.bench.train import TrainBenchResult, format_table
from dist_llm.callbacks.profiling import breakdown_path, parse_steps
from dist_llm.errors import ConfigError
from dist_llm.metrics.breakdown import Span, mean_breakdown, step_breakdowns
from dist_llm.metrics.phases import BACKWARD, DATA, FORWARD, OPTIMIZER, STEP
from tests.conftest import make_trainer, run_train

PARTS = ("data", "forward", "backward", "optimizer", "comm_exposed", "other")


def test_communication_is_split_by_the_phase_it_ran_inside():
    ms = 1_000_000  # profiler spans are in nanoseconds
    markers = [
        Span(name, a * ms, b * ms)
        for name, a, b in (
            (STEP, 0, 100),
            (DATA, 0, 10),
            (FORWARD, 10, 40),
            (BACKWARD, 40, 80),
            (OPTIMIZER, 85, 95),
        )
    ]
    # All-reduces overlapping the end of backward and the gap after it; one outside the step
    # (a metrics all-reduce) is left out.
    comm = [Span("gloo:all_reduce", a * ms, b * ms) for a, b in ((70, 84), (75, 78), (120, 130))]
    [row] = step_breakdowns(markers, comm)
    assert row["step"] == 100 and row["comm"] == 14 and row["comm_ops"] == 17  # 75-78 twice in the sum
    assert row["comm_in_backward"] == 10 and row["comm_exposed"] == 4
    assert row["other"] == 6  # 80-85 less the exposed 80-84, and 95-100
    assert sum(row[k] for k in PARTS) == row["step"]


def test_means_add_up_to_the_mean_step():
    rows = [
        {"step": 10.0, "forward": 4.0, "comm_exposed": 1.0, "other": 5.0},
        {"step": 20.0, "forward": 6.0, "comm_exposed": 0.0, "other": 14.0},
    ]
    mean = mean_breakdown(rows)
    assert mean == {"step": 15.0, "forward": 5.0, "comm_exposed": 0.5, "other": 9.5}


@pytest.mark.parametrize("spec", ["6", "0-3", "5-2", "a-b"])
def test_bad_profile_steps_name_the_key(spec):
    with pytest.raises(ConfigError, match="logging.profile_steps"):
        parse_steps(spec)


def _read(run_dir, rank: int = 0) -> dict:
    with open(breakdown_path(str(run_dir), rank)) as f:
        return json.load(f)


def test_profiled_run_breaks_steps_down_and_trains_the_same_bits(tmp_path, dataset):
    common = ["train.max_steps=6", "checkpoint.interval=0"]
    default = make_trainer(tmp_path / "default", dataset, common, []).fit()
    profiled = make_trainer(tmp_path / "profiled", dataset, [*common, "logging.profile_steps=3-6"], []).fit()

    assert not os.path.exists(os.path.dirname(breakdown_path(str(tmp_path / "default"), 0)))
    assert [sorted(r) for r in default] == [sorted(r) for r in profiled]
    assert [(r.get("loss"), r.get("grad_norm")) for r in default] == [
        (r.get("loss"), r.get("grad_norm")) for r in profiled
    ]

    report = _read(tmp_path / "profiled")
    assert len(report["steps_ms"]) == 4
    b = report["phases_ms"]
    assert all(b[k] > 0 for k in ("data", "forward", "backward", "optimizer"))
    assert b["comm"] == 0 and b["other"] >= 0
    assert sum(b[k] for k in PARTS) == pytest.approx(b["step"])
    for step in report["steps_ms"]:
        assert sum(step[k] for k in PARTS[:-1]) <= step["step"]
    assert report["precision"] == "fp32" and report["peak_tflops"]["bf16"] > 0
    assert report["peak_tflops"]["fp32"] > 0


@pytest.mark.distributed
def test_two_ranks_report_ddp_all_reduce_inside_backward(tmp_path, dataset):
    run_train(
        str(tmp_path),
        dataset,
        ["train.max_steps=5", "train.precision=fp32", "checkpoint.interval=0", "logging.profile_steps=2-5"],
        nproc=2,
    )
    for rank in (0, 1):
        b = _read(tmp_path, rank)["phases_ms"]
        assert b["comm"] > 0 and b["comm_in_backward"] > 0
        assert sum(b[k] for k in PARTS) == pytest.approx(b["step"])


def test_table_has_the_breakdown_columns():
    breakdown = {
        "step": 10.0,
        "data": 1.0,
        "forward_backward": 6.0,
        "comm_in_forward_backward": 2.0,
        "optimizer": 1.0,
        "comm": 2.5,
        "comm_exposed": 0.5,
        "other": 1.5,
    }
    result = TrainBenchResult(
        name="pp2",
        ranks=2,
        threads_per_rank=1,
        tokens_per_s=100.0,
        tokens_per_s_per_thread=50.0,
        step_time_s=0.01,
        profiled_step_time_s=0.0102,
        precision="fp32",
        achieved_tflops=0.01,
        mfu=0.25,
        peak_tflops={"bf16": 0.001, "fp32": 0.04},
        memory={},
        rank_memory=[{"memory_rss_bytes": 2**20}] * 2,
        breakdown_ms=breakdown,
        rank_breakdowns=[],
    )
    table = format_table([result])
    assert "25.0% (fp32 0.04)" in table and "0.001 / 0.04" in table
    assert (
        "pp2 | 10.0 (+2%) | 1.0 | - | 6.0 (fwd+bwd) | 1.0 | 0.5 | 1.5 | 2.5 (forward_backward 2.0)" in table
    )
