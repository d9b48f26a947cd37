"""MeshEngine (DP x TP x PP) in real torchrun processes against a single-process run of the same
global batch, and resuming across parallel layouts.

fp32 on CPU. Layouts reduce in a different order than one process (TP all-reduces partial matmul
sums, DP averages, PP scales accumulated gradients, the TP optimizer uses the per-tensor AdamW
kernel instead of the fused one), so losses agree to fp32 rounding, not bits: rel 1e-5 over
10 steps (measured: <= 2e-7 relative). Resuming on the same layout is bitwise.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from dist_llm.export import export_safetensors
from tests.conftest import assert_weights_equal, final_weights, run_train, train_losses

STEPS = 10
STOP = 4
COMMON = [f"train.max_steps={STEPS}", "train.precision=fp32", "checkpoint.interval=0"]


def assert_close_losses(a: dict[int, float], b: dict[int, float], steps: range) -> None:
    assert [s for s in steps if s in b] == list(steps)
    for step in steps:
        assert b[step] == pytest.approx(a[step], rel=1e-5), f"step {step}: {b[step]} vs {a[step]}"


def assert_close_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Adam divides by sqrt(v): elements with near-zero gradients move by a fraction of lr whatever
    their gradient's rounding, so weights differ by up to ~1e-5 (measured 1.7e-5 at lr 3e-3 after
    10 steps). 1e-4 is 3% of one step's largest update; a wrong shard or sum would be far off."""
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-4, msg=name)


@pytest.fixture(scope="module")
def single(tmp_path_factory, dataset) -> str:
    run_dir = str(tmp_path_factory.mktemp("single") / "run")
    run_train(run_dir, dataset, COMMON)
    return run_dir


@pytest.fixture(scope="module")
def tp2(tmp_path_factory, dataset) -> str:
    run_dir = str(tmp_path_factory.mktemp("tp2") / "run")
    run_train(run_dir, dataset, [*COMMON, "engine.tp=2"], nproc=2)
    return run_dir


@pytest.mark.distributed
def test_tensor_parallel_matches_single_process(single, tp2):
    assert_close_losses(train_losses(single), train_losses(tp2), range(1, STEPS + 1))
    assert_close_weights(final_weights(single), final_weights(tp2))


@pytest.mark.distributed
@pytest.mark.parametrize("nproc, layout", [
    (2, ["engine.pp=2"]),
    # DP x TP with sequence parallelism and activation checkpointing: the 4-rank run covers them all.
    (4, ["engine.tp=2", "engine.sequence_parallel=true", "engine.activation_checkpointing=true"]),
], ids=["pp2", "dp2_tp2_sp_ac"])
def test_layout_matches_single_process(tmp_path, dataset, single, nproc, layout):
    run_dir = str(tmp_path / "run")
    run_train(run_dir, dataset, [*COMMON, *layout], nproc=nproc)
    assert_close_losses(train_losses(single), train_losses(run_dir), range(1, STEPS + 1))
    assert_close_weights(final_weights(single), final_weights(run_dir))


@pytest.mark.distributed
def test_activation_checkpointing_on_ddp_is_bitwise(tmp_path, dataset, single):
    run_dir = str(tmp_path / "run")
    run_train(run_dir, dataset, [*COMMON, "engine.activation_checkpointing=true"])
    assert train_losses(run_dir) == train_losses(single)
    assert_weights_equal(final_weights(single), final_weights(run_dir))


@pytest.mark.distributed
def test_tensor_parallel_resume_same_layout_bitwise_and_onto_one_rank(tmp_path, dataset, tp2):
    stopped = str(tmp_path / "stopped")
    run_train(stopped, dataset, [*COMMON, f"train.exit_at_step={STOP}", "engine.tp=2"], nproc=2)
    onto_one = str(tmp_path / "onto_one")
    shutil.copytree(stopped, onto_one)

    run_train(stopped, dataset, [*COMMON, "checkpoint.resume=auto", "engine.tp=2"], nproc=2)
    assert train_losses(stopped) == train_losses(tp2)
    assert_weights_equal(final_weights(tp2), final_weights(stopped))

    # TP=2 -> one process on the DDP engine: the checkpoint holds full tensors in its format.
    run_train(onto_one, dataset, [*COMMON, "checkpoint.resume=auto"], nproc=1)
    assert_close_losses(train_losses(tp2), train_losses(onto_one), range(STOP + 1, STEPS + 1))


@pytest.mark.distributed
def test_single_process_checkpoint_resumes_with_tensor_parallel(tmp_path, dataset, single):
    moved = str(tmp_path / "moved")
    run_train(moved, dataset, [*COMMON, f"train.exit_at_step={STOP}"])
    run_train(moved, dataset, [*COMMON, "checkpoint.resume=auto", "engine.tp=2"], nproc=2)
    assert_close_losses(train_losses(single), train_losses(moved), range(STOP + 1, STEPS + 1))


@pytest.mark.distributed
def test_safetensors_export_from_tensor_parallel_checkpoint(tmp_path, tp2):
    """Any engine's checkpoint yields consolidated weights: here a TP=2 run, exported in bf16."""
    path = export_safetensors(tp2, str(tmp_path / "export"), dtype="bf16")
    tensors = load_file(path)
    weights = final_weights(tp2)
    assert set(tensors) == set(weights) - {"output.weight"}, "tied head is stored once"
    for name, value in tensors.items():
        assert value.dtype == torch.bfloat16 and torch.equal(value, weights[name].to(torch.bfloat16)), name
    assert json.loads((tmp_path / "export" / "config.json").read_text())["engine"]["tp"] == 2


@pytest.mark.distributed
def test_pipeline_parallel_resume_same_layout_and_onto_one_rank(tmp_path, dataset, single):
    """PP=2 checkpoints (stage-sharded optimizer consolidated on save) resume at PP=2 and on 1 rank,
    continuing the single-process loss curve."""
    stopped = str(tmp_path / "stopped")
    run_train(stopped, dataset, [*COMMON, f"train.exit_at_step={STOP}", "engine.pp=2"], nproc=2)
    onto_one = str(tmp_path / "onto_one")
    shutil.copytree(stopped, onto_one)
    run_train(stopped, dataset, [*COMMON, "checkpoint.resume=auto", "engine.pp=2"], nproc=2)
    straight = str(tmp_path / "straight")
    run_train(straight, dataset, [*COMMON, "engine.pp=2"], nproc=2)
    assert train_losses(stopped) == train_losses(straight), "PP=2 resume is bitwise"
    assert_weights_equal(final_weights(straight), final_weights(stopped))
    assert_close_losses(train_losses(single), train_losses(stopped), range(1, STEPS + 1))
    run_train(onto_one, dataset, [*COMMON, "checkpoint.resume=auto"], nproc=1)
    assert_close_losses(train_losses(single), train_losses(onto_one), range(STOP + 1, STEPS + 1))
