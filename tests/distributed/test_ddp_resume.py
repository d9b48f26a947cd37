"""Exact continuation: N steps == k steps + stop + resume + N-k steps, bitwise on CPU, on 1 and 2
real ranks; and resuming a 2-rank run on 1 rank continues the same global data order."""

from __future__ import annotations

import pytest

from tests.conftest import assert_weights_equal, final_weights, run_train, train_losses

STEPS = 8
STOP = 4


@pytest.mark.distributed
@pytest.mark.parametrize("nproc", [1, 2])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_is_bitwise_identical(tmp_path, dataset, nproc, precision):
    common = [f"train.max_steps={STEPS}", f"train.precision={precision}", "checkpoint.interval=0"]
    straight = str(tmp_path / "straight")
    run_train(straight, dataset, common, nproc)

    resumed = str(tmp_path / "resumed")
    run_train(resumed, dataset, [*common, f"train.exit_at_step={STOP}"], nproc)
    assert sorted(train_losses(resumed)) == list(range(1, STOP + 1))
    run_train(resumed, dataset, [*common, "checkpoint.resume=auto"], nproc)

    a, b = train_losses(straight), train_losses(resumed)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    assert [a[s] for s in sorted(a)] == [b[s] for s in sorted(b)], "loss curves differ after resume"
    assert a[STEPS] < a[1]
    assert_weights_equal(final_weights(straight), final_weights(resumed))


@pytest.mark.distributed
def test_resume_two_ranks_onto_one_continues_the_same_data(tmp_path, dataset):
    """The data state holds consumed samples, not per-rank positions: 1 rank picks up the 2-rank order.
    Reductions differ (2-way all-reduce vs accumulation), so losses agree to fp32 rounding, not bits."""
    common = [f"train.max_steps={STEPS}", "train.precision=fp32", "checkpoint.interval=0"]
    straight = str(tmp_path / "two")
    run_train(straight, dataset, common, nproc=2)
    moved = str(tmp_path / "moved")
    run_train(moved, dataset, [*common, f"train.exit_at_step={STOP}"], nproc=2)
    run_train(moved, dataset, [*common, "checkpoint.resume=auto"], nproc=1)
    a, b = train_losses(straight), train_losses(moved)
    assert sorted(b) == list(range(1, STEPS + 1))
    for step in range(STOP + 1, STEPS + 1):
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), f"step {step}: {b[step]} vs {a[step]}"
