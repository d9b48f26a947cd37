"""The `deepspeed` launcher with a hostfile starts the same job torchrun does: a ZeRO-1 run on
2 ranks gives bitwise the losses of the torchrun launch."""

from __future__ import annotations

import os
import subprocess

import pytest

from dist_llm.launch.deepspeed_launcher import deepspeed_command
from tests.conftest import REPO, SMALL_MODEL, free_port, run_train, train_losses

OVERRIDES = [
    "train.max_steps=4",
    "train.precision=fp32",
    "engine.type=deepspeed",
    "engine.zero_stage=1",
    "launch.nproc_per_node=2",
    *SMALL_MODEL,
]


def test_command_construction():
    cmd = deepspeed_command(["train", "c.yaml"], "hosts", "10.0.0.1", 6000, node_rank=1)
    assert cmd[:5] == [
        "deepspeed",
        "--hostfile=hosts",
        "--master_addr=10.0.0.1",
        "--master_port=6000",
        "--no_local_rank",
    ]
    assert cmd[5:7] == ["--no_ssh", "--node_rank=1"]
    assert cmd[-4:] == ["--module", "dist_llm.cli", "train", "c.yaml"]
    assert "--no_ssh" not in deepspeed_command(["train"], "hosts", "h")


@pytest.mark.distributed
def test_hostfile_launch_matches_torchrun(tmp_path, dataset):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    ds_run = str(tmp_path / "ds")
    args = [
        "train",
        str(REPO / "configs" / "tiny.yaml"),
        f"data.path={dataset}",
        f"logging.run_dir={ds_run}",
        *OVERRIDES,
    ]
    proc = subprocess.run(
        deepspeed_command(args, str(hostfile), "127.0.0.1", free_port(), node_rank=0),
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    torchrun_run = str(tmp_path / "torchrun")
    run_train(torchrun_run, dataset, OVERRIDES, nproc=2)
    assert train_losses(ds_run) == train_losses(torchrun_run)
