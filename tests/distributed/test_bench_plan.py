"""`dist-llm bench plan` on 2 real ranks: the planner's per-rank prediction next to the measured
training peak and tokens/s of the same layout."""

from __future__ import annotations

import pytest

from dist_llm.bench.plan import bench_plan, format_table
from tests.conftest import REPO, SMALL_MODEL


@pytest.mark.distributed
def test_prediction_and_measurement_of_a_two_rank_layout(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    overrides = [f"data.path={dataset}", *SMALL_MODEL, "train.precision=fp32"]
    (check,) = bench_plan(str(REPO / "configs" / "tiny.yaml"), overrides, ["fsdp2"], 3, str(tmp_path))
    assert check.ranks == 2 and len(check.predicted_gb) == len(check.measured_gb) == 2
    # A 2-layer model: the process's own cost dominates, and the planner measures it.
    assert all(abs(e) < 0.35 for e in check.error), check
    assert check.predicted_tokens_per_s > 0 and check.measured_tokens_per_s > 0
    assert "fsdp2" in format_table([check])
