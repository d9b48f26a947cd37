"""DeepSpeed engine on 2 real ranks (gloo, CPU, fp32) against plain data parallelism on the torch
engine: the same initial weights and loss curve for ZeRO-1/2/3 and ZeRO-3 with CPU offload, bitwise
resume, eval of a ZeRO-3 checkpoint (read tensor by tensor from DeepSpeed's partition files),
resume on another world size in both directions, and the per-rank memory each stage holds. Runs
are shared between tests."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dist_llm.checkpoint.deepspeed_files import UNIVERSAL, read_by
from tests.conftest import (
    REPO,
    assert_weights_equal,
    final_weights,
    read_metrics,
    run_train,
    train_command,
    train_losses,
)

STEPS = 20
STOP = 10
COMMON = [f"train.max_steps={STEPS}", "train.precision=fp32", "checkpoint.interval=0"]
VARIANTS = {
    "dp": ["engine.dp_shard=1", "engine.dp_replicate=-1"],
    "zero1": ["engine.type=deepspeed", "engine.zero_stage=1"],
    "zero2": ["engine.type=deepspeed", "engine.zero_stage=2"],
    "zero3": ["engine.type=deepspeed", "engine.zero_stage=3"],
    "zero3_offload": [
        "engine.type=deepspeed",
        "engine.zero_stage=3",
        "engine.offload_optimizer=cpu",
        "engine.offload_params=cpu",
    ],
}
# Measured: ZeRO-1/2/3 (torch AdamW on flat partitions) and ZeRO-3 + CPU offload (DeepSpeedCPUAdam)
# differ from DDP by at most ~5e-7 per step over 20 steps; the differences come from the order of
# the gradient reduction (reduce-scatter vs all-reduce) and of the clipping arithmetic.
LOSS_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory, dataset):
    """name -> run directory of an uninterrupted 2-rank run, trained on first use."""
    root = tmp_path_factory.mktemp("deepspeed_runs")
    done: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in done:
            run_dir = str(root / name)
            run_train(run_dir, dataset, [*COMMON, *VARIANTS[name]], nproc=2)
            done[name] = run_dir
        return done[name]

    return get


@pytest.mark.distributed
@pytest.mark.parametrize("variant", ["zero1", "zero2", "zero3", "zero3_offload"])
def test_loss_curve_matches_ddp(runs, variant):
    ddp, ds = train_losses(runs("dp")), train_losses(runs(variant))
    assert sorted(ds) == sorted(ddp) == list(range(1, STEPS + 1))
    worst = max(abs(ds[s] - ddp[s]) for s in ddp)
    assert worst <= LOSS_TOLERANCE, f"{variant}: largest per-step loss difference to DDP {worst:.3g}"
    assert ds[STEPS] < ds[1] - 0.5


@pytest.mark.distributed
@pytest.mark.parametrize("variant", ["zero3"])  # ZeRO-2's: tests/integration/test_s3_deepspeed.py
def test_resume_is_bitwise_identical(tmp_path, dataset, runs, variant):
    resumed = str(tmp_path / "resumed")
    run_train(resumed, dataset, [*COMMON, *VARIANTS[variant], f"train.exit_at_step={STOP}"], nproc=2)
    assert sorted(train_losses(resumed)) == list(range(1, STOP + 1))
    run_train(resumed, dataset, [*COMMON, *VARIANTS[variant], "checkpoint.resume=auto"], nproc=2)
    straight = runs(variant)
    a, b = train_losses(straight), train_losses(resumed)
    assert [a[s] for s in range(1, STEPS + 1)] == [b[s] for s in range(1, STEPS + 1)]
    assert_weights_equal(final_weights(straight), final_weights(resumed))


@pytest.mark.distributed
def test_eval_reads_the_zero3_partitions(runs):
    """A ZeRO-3 checkpoint holds only DeepSpeed's per-rank partitions; eval assembles full fp32
    weights keyed like the bare model from them and scores what the torch engine's checkpoint scores."""
    results = {}
    for name in ("zero3", "dp"):
        out = subprocess.run(
            [sys.executable, "-m", "dist_llm.cli", "eval", runs(name), "--max-batches", "2"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    assert results["zero3"]["step"] == STEPS
    assert results["zero3"]["val_loss"] == pytest.approx(results["dp"]["val_loss"], abs=LOSS_TOLERANCE)
    ddp, zero3 = final_weights(runs("dp")), final_weights(runs("zero3"))
    assert ddp.keys() == zero3.keys()
    for name in ddp:
        assert zero3[name].dtype == ddp[name].dtype and zero3[name].shape == ddp[name].shape, name


@pytest.mark.distributed
@pytest.mark.parametrize("variant", ["zero2", "zero3"])
def test_resume_on_another_world_size_continues_the_loss(tmp_path, dataset, runs, variant):
    """2 ranks -> 1 -> 2: the ZeRO partitions no longer fit, so rank 0 alone converts DeepSpeed's
    files to a universal checkpoint, stored (committed) beside them, and every rank loads that
    (weights and Adam moments). Measured ~5e-7 per step from the uninterrupted 2-rank run
    (accumulation vs reduction order)."""
    moved = str(tmp_path / "moved")
    legs = [(2, 7), (1, 14), (2, STEPS)]  # (ranks, last step of the leg)
    for i, (nproc, last) in enumerate(legs):
        resume = ["checkpoint.resume=auto"] if i else []
        proc = run_train(
            moved, dataset, [*COMMON, *VARIANTS[variant], *resume, f"train.exit_at_step={last}"], nproc=nproc
        )
        if i:  # converted once, by one process, and kept beside the checkpoint
            assert (proc.stdout + proc.stderr).count("to a universal checkpoint in") == 1
            universal = tmp_path / "moved" / "checkpoints" / f"step-{legs[i - 1][1]:08d}" / UNIVERSAL
            assert (universal / "COMMITTED").exists() and (universal / "manifest.json").exists()
    a, b = train_losses(runs(variant)), train_losses(moved)
    assert sorted(b) == list(range(1, STEPS + 1))
    for step in b:
        assert b[step] == pytest.approx(a[step], abs=LOSS_TOLERANCE), f"step {step}: {b[step]} vs {a[step]}"


def test_each_rank_reads_only_the_files_deepspeed_loads_for_it():
    zero2 = [
        "mp_rank_00_model_states.pt",
        *(f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(3)),
    ]
    zero3 = [
        *(f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(3)),
        *(f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(3)),
        *(f"offloaded_tensors/rank{r:02d}/optimizer/{r}.tensor.swp" for r in range(3)),
    ]
    read = {
        (stage, rank): [n for n in names if read_by(f"deepspeed/{n}", rank)]
        for stage, names in (("2", zero2), ("3", zero3))
        for rank in range(3)
    }
    assert read["2", 1] == ["mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert read["3", 2] == [
        "zero_pp_rank_2_mp_rank_00_model_states.pt",
        "bf16_zero_pp_rank_2_mp_rank_00_optim_states.pt",
        "offloaded_tensors/rank02/optimizer/2.tensor.swp",
    ]


def first_record_memory(run_dir: str) -> dict[str, int]:
    first = read_metrics(run_dir)[0]
    return {k: first[k] for k in ("param_bytes", "grad_bytes", "optimizer_bytes")}


@pytest.mark.distributed
def test_memory_report_shows_what_each_stage_shards(runs):
    ddp = first_record_memory(runs("dp"))
    z1, z2, z3 = (first_record_memory(runs(v)) for v in ("zero1", "zero2", "zero3"))

    def half(value: int, of: int) -> bool:  # partitions are padded to aligned sizes
        return abs(value - of / 2) <= 0.02 * of

    assert z1["param_bytes"] == z2["param_bytes"] == ddp["param_bytes"]
    assert half(z1["optimizer_bytes"], ddp["optimizer_bytes"]) and z1["grad_bytes"] == ddp["grad_bytes"]
    assert half(z2["optimizer_bytes"], ddp["optimizer_bytes"]) and half(z2["grad_bytes"], ddp["grad_bytes"])
    for key in ("param_bytes", "grad_bytes", "optimizer_bytes"):
        assert half(z3[key], ddp[key]), f"ZeRO-3 {key}: {z3[key]} vs DDP {ddp[key]}"
    assert half(sum(z3.values()), sum(ddp.values()))


@pytest.mark.distributed
@pytest.mark.parametrize("stage", [0, 2])
def test_non_finite_steps_are_skipped_counted_and_stop_the_run(tmp_path, dataset, stage):
    """An absurd learning rate makes the loss non-finite within a few steps: DeepSpeed skips those
    steps (ZeRO: its own overflow check; stage 0: our fused AdamW's found_inf), they are counted,
    and after train.max_bad_steps in a row the run stops with the torch engine's clear error."""
    run = str(tmp_path / "run")
    proc = subprocess.run(
        train_command(
            run,
            dataset,
            [
                *COMMON,
                "engine.type=deepspeed",
                f"engine.zero_stage={stage}",
                "optim.lr=1e6",
                "optim.warmup_steps=0",
                "train.max_bad_steps=3",
            ],
            nproc=2,
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "3 consecutive steps with non-finite loss/gradients" in proc.stderr, proc.stderr[-3000:]
    assert "step skipped (1 in a row" in proc.stderr
    assert max(train_losses(run)) < STEPS, "the run stopped early"
