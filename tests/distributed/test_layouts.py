"""The torch engine on every layout, in real torchrun processes (gloo, CPU, fp32), against one
process training the same global batches: equal loss curves, bitwise resume within a layout, and
resume onto another layout (or one rank) continuing the curve with the optimizer state carried over.

Layouts reduce in a different order than one process (FSDP reduce-scatters, TP all-reduces partial
matmul sums and computes the cross-entropy over vocabulary shards, PP scales accumulated gradients),
so losses agree to fp32 rounding, not bits: rel 1e-5 over 20 steps (measured: <= 2e-7). The initial
weights are the same on every layout, so the curves agree from step 1.
"""

from __future__ import annotations

import os
import shutil

import pytest

from dist_llm.checkpoint import layout
from tests.conftest import assert_weights_equal, final_weights, run_train, train_losses

STEPS = 20
STOP = 8  # every run saves here, the point the resume tests continue from
COMMON = [
    f"train.max_steps={STEPS}",
    "train.precision=fp32",
    f"checkpoint.interval={STOP}",
    "checkpoint.keep_last=5",
]
LAYOUTS = {  # name -> (ranks, overrides)
    "dp2": (2, ["engine.dp_shard=1", "engine.dp_replicate=-1"]),
    "fsdp2": (2, []),
    "tp2": (2, ["engine.tp=2"]),
    "pp2": (2, ["engine.pp=2"]),
    "fsdp4": (4, []),
    "hsdp2x2": (4, ["engine.dp_replicate=2"]),
    "fsdp2xtp2_ac": (4, ["engine.tp=2", "engine.activation_checkpointing=true"]),
    "fsdp2xpp2": (4, ["engine.pp=2"]),
    "tp2xpp2": (4, ["engine.tp=2", "engine.pp=2", "engine.dp_shard=1"]),
}
NAMES = list(LAYOUTS)


def assert_close_losses(reference: dict[int, float], losses: dict[int, float], steps: range) -> None:
    assert sorted(losses) == list(steps)
    for step in steps:
        assert losses[step] == pytest.approx(reference[step], rel=1e-5), (
            f"step {step}: {losses[step]} vs {reference[step]}"
        )


def from_checkpoint(source: str, run_dir: str) -> str:
    """A fresh run directory holding only `source`'s checkpoint at STOP, to resume from."""
    step_dir = layout.step_dir_name(STOP)
    shutil.copytree(
        os.path.join(source, "checkpoints", step_dir), os.path.join(run_dir, "checkpoints", step_dir)
    )
    with open(os.path.join(run_dir, "checkpoints", layout.LATEST), "w") as f:
        f.write(step_dir)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory, dataset):
    """name -> run directory of an uninterrupted run on that layout ("single": one process)."""
    root = tmp_path_factory.mktemp("layouts")
    done: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in done:
            nproc, overrides = LAYOUTS.get(name, (1, []))
            done[name] = str(root / name)
            run_train(done[name], dataset, [*COMMON, *overrides], nproc=nproc)
        return done[name]

    return get


@pytest.mark.distributed
@pytest.mark.parametrize("name", NAMES)
def test_layout_matches_one_process(runs, name):
    assert_close_losses(train_losses(runs("single")), train_losses(runs(name)), range(1, STEPS + 1))


@pytest.mark.distributed
@pytest.mark.parametrize("source", NAMES)
def test_resume_onto_another_layout_continues_the_curve(tmp_path, dataset, runs, source):
    """Each layout's checkpoint resumes on the next layout of the list (every layout is saved from
    and loaded into once, sharded differently each time): DCP reshards weights and Adam moments."""
    target = NAMES[(NAMES.index(source) + 1) % len(NAMES)]
    nproc, overrides = LAYOUTS[target]
    moved = from_checkpoint(runs(source), str(tmp_path / "moved"))
    run_train(moved, dataset, [*COMMON, *overrides, "checkpoint.resume=auto"], nproc=nproc)
    assert_close_losses(train_losses(runs("single")), train_losses(moved), range(STOP + 1, STEPS + 1))


@pytest.mark.distributed
@pytest.mark.parametrize("name", ["single", "fsdp2xtp2_ac"])  # FSDP2 alone: the bf16 test below
def test_resume_on_the_same_layout_is_bitwise(tmp_path, dataset, runs, name):
    nproc, overrides = LAYOUTS.get(name, (1, []))
    resumed = from_checkpoint(runs(name), str(tmp_path / "resumed"))
    run_train(resumed, dataset, [*COMMON, *overrides, "checkpoint.resume=auto"], nproc=nproc)
    straight = train_losses(runs(name))
    assert train_losses(resumed) == {s: straight[s] for s in range(STOP + 1, STEPS + 1)}
    assert_weights_equal(final_weights(runs(name)), final_weights(resumed))


@pytest.mark.distributed
def test_bf16_resume_is_bitwise(tmp_path, dataset):
    common = [*COMMON, "train.precision=bf16", "train.max_steps=10"]
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    run_train(straight, dataset, common, nproc=2)
    run_train(resumed, dataset, [*common, f"train.exit_at_step={STOP}"], nproc=2)
    run_train(resumed, dataset, [*common, "checkpoint.resume=auto"], nproc=2)
    assert train_losses(resumed) == train_losses(straight)
    assert_weights_equal(final_weights(straight), final_weights(resumed))


@pytest.mark.distributed
def test_resume_onto_one_rank(tmp_path, dataset, runs):
    moved = from_checkpoint(runs("hsdp2x2"), str(tmp_path / "moved"))
    run_train(moved, dataset, [*COMMON, "checkpoint.resume=auto"], nproc=1)
    assert_close_losses(train_losses(runs("single")), train_losses(moved), range(STOP + 1, STEPS + 1))
