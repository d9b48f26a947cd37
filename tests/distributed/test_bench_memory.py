"""`dist-llm bench memory` on 2 real ranks: every phase measured on every rank, and what the engine
holds per rank is the even share of the model's training state (FSDP2)."""

from __future__ import annotations

import pytest

from dist_llm.bench.memory import PHASES, bench_memory
from tests.conftest import REPO, SMALL_MODEL


@pytest.mark.distributed
def test_two_rank_memory_by_phase(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    overrides = [f"data.path={dataset}", *SMALL_MODEL, "train.precision=fp32"]
    (result,) = bench_memory(
        str(REPO / "configs" / "tiny.yaml"), overrides, [2], steps=2, work_dir=str(tmp_path)
    )
    assert result.ranks == 2 and result.params > 0
    for phase in PHASES:
        assert len(result.peak_gb[phase]) == 2 and min(result.peak_gb[phase]) > 0, phase
        assert result.spread[phase] < 1.25, (phase, result.peak_gb[phase])  # rank 0 is no different
    for held in result.engine_gb:
        assert held == pytest.approx(result.share_gb, rel=0.05)
