"""Launcher command lines (torchrun, deepspeed, sbatch) and `dist-llm launch`/`slurm submit --dry-run`:
what each node runs, checked without a cluster. Running them is in tests/distributed/test_multinode.py
(two torchrun nodes) and tests/integration/test_slurm_job.py (a real SLURM job)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dist_llm.cli import main
from dist_llm.errors import ConfigError
from dist_llm.launch.deepspeed_launcher import deepspeed_command, read_hostfile
from dist_llm.launch.sbatch import SbatchSpec, render_sbatch
from dist_llm.launch.torchrun import in_torchrun, torchrun_command
from tests.conftest import REPO

EXAMPLE = REPO / "launch" / "pretrain.sbatch"
# launch/pretrain.sbatch is this spec rendered: a 1.3B run on 4 nodes of 8 GPUs.
EXAMPLE_SPEC = SbatchSpec(
    config="configs/models/1.3b.yaml",
    nodes=4,
    gpus_per_node=8,
    cpus_per_task=64,
    partition="gpu",
    time="24:00:00",
    job_name="dist-llm-1.3b",
    run_dir="runs/1.3b",
    workdir="/path/to/dist_llm",
    python="python3",
)


def test_single_node_is_standalone():
    cmd = torchrun_command(["train", "c.yaml", "a.b=1"], nproc_per_node=2)
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert "--standalone" in cmd and "--nproc_per_node=2" in cmd
    assert cmd[-5:] == ["-m", "dist_llm.cli", "train", "c.yaml", "a.b=1"]


def test_multi_node_uses_c10d_rendezvous_and_forwards_usr1():
    cmd = torchrun_command(
        ["train", "c.yaml"],
        nproc_per_node=8,
        nnodes=4,
        rdzv_endpoint="10.1.2.3:6000",
        rdzv_id="job7",
        max_restarts=2,
        shutdown_timeout_s=120,
    )
    assert "--standalone" not in cmd
    for flag in (
        "--nnodes=4",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=10.1.2.3:6000",
        "--rdzv_id=job7",
        "--max_restarts=2",
        "--nproc_per_node=8",
        "--shutdown_timeout=120",
    ):
        assert flag in cmd
    assert any(a.startswith("--signals_to_handle=") and "SIGUSR1" in a for a in cmd)


def test_in_torchrun_reads_environment(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert not in_torchrun()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert in_torchrun()


def test_deepspeed_launchers():
    assert "--launcher=openmpi" in deepspeed_command(["train"], "h", "m", launcher="openmpi")
    assert not any(a.startswith("--launcher") for a in deepspeed_command(["train"], "h", "m"))  # pdsh default
    no_ssh = deepspeed_command(["train"], "h", "m", node_rank=1, launcher="openmpi")
    assert "--no_ssh" in no_ssh and not any(a.startswith("--launcher") for a in no_ssh)
    with pytest.raises(ConfigError, match="not one of"):
        deepspeed_command(["train"], "h", "m", launcher="ssh")


@pytest.mark.parametrize(
    "text, error",
    [
        ("node1 slots=8\nnode2 slot=8\n", r":2: 'node2 slot=8' should look like"),
        ("node1 slots=8\nnode1 slots=8\n", r":2: host node1 is listed twice"),
        ("node1 slots=8\nnode2 slots=4\n", r"different slots \(node1=8, node2=4\)"),
        ("# only a comment\n", r"no hosts"),
    ],
)
def test_hostfile_errors_name_the_line(tmp_path, text, error):
    path = tmp_path / "hostfile"
    path.write_text(text)
    with pytest.raises(ConfigError, match=error):
        read_hostfile(str(path))


def test_hostfile_example_parses():
    assert [(h.name, h.slots) for h in read_hostfile(str(REPO / "launch" / "hostfile.example"))] == [
        ("node001", 8),
        ("node002", 8),
    ]


def dry_run(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_launch_dry_run_torchrun_multi_node(capsys, dataset):
    out = dry_run(
        capsys,
        "launch",
        str(REPO / "configs" / "tiny.yaml"),
        f"data.path={dataset}",
        "--nnodes=2",
        "train.global_batch_size=32",
        "--nproc-per-node=2",
        "--rdzv-endpoint=node1:29400",
        "--dry-run",
    )
    for part in (
        "--nnodes=2",
        "--rdzv_endpoint=node1:29400",
        "launch.nnodes=2",
        "launch.nproc_per_node=2",
        "checkpoint.resume=auto",
    ):
        assert part in out


def test_launch_dry_run_deepspeed_hostfile(capsys, dataset):
    out = dry_run(
        capsys,
        "launch",
        str(REPO / "configs" / "tiny.yaml"),
        f"data.path={dataset}",
        "train.global_batch_size=128",
        "--launcher=deepspeed",
        f"--hostfile={REPO / 'launch' / 'hostfile.example'}",
        "--no-ssh",
        "--node-rank=1",
        "--dry-run",
    )
    assert out.startswith("deepspeed ") and "--master_addr=node001" in out and "--node_rank=1" in out
    assert "launch.nnodes=2" in out and "launch.nproc_per_node=8" in out


def test_launch_checks_the_config_before_starting_anything(capsys, dataset):
    # 16 ranks do not divide the tiny config's global batch: refused in this process, with the fix.
    assert (
        main(
            [
                "launch",
                str(REPO / "configs" / "tiny.yaml"),
                f"data.path={dataset}",
                "--nnodes=2",
                "--nproc-per-node=8",
                "--rdzv-endpoint=node1:29400",
            ]
        )
        == 2
    )
    assert "pick a global batch that is a multiple of" in capsys.readouterr().err
    assert main(["launch", str(REPO / "configs" / "tiny.yaml"), "--nnodes=2"]) == 2
    assert "needs --rdzv-endpoint" in capsys.readouterr().err


def test_sbatch_script_options():
    script = render_sbatch(
        SbatchSpec(
            config="c.yaml",
            overrides=["optim.lr=3e-4"],
            nodes=2,
            gpus_per_node=4,
            time="2:00:00",
            run_dir="runs/x",
            signal_before_s=240,
            sbatch_args=["--exclusive"],
            srun_args=["--container-image=img.sqsh"],
        )
    )
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --time=2:00:00",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@240",
        "#SBATCH --output=runs/x/slurm/%x-%j.out",
        "#SBATCH --open-mode=append",
        "#SBATCH --exclusive",
    ):
        assert line in script.splitlines()
    for part in (
        "--container-image=img.sqsh",
        "--nproc_per_node=4",
        "--shutdown_timeout=210",
        "--max_restarts=3",  # a hung or dead rank restarts the job in place
        "optim.lr=3e-4",
        "checkpoint.resume=auto",
        '"--rdzv_endpoint=${MASTER_ADDR}:${MASTER_PORT}"',
    ):
        assert part in script
    assert "#SBATCH --partition" not in script and "#SBATCH --gpus-per-node" not in render_sbatch(
        SbatchSpec(config="c.yaml", nproc_per_node=2)
    )


def test_sbatch_script_is_valid_bash():
    script = render_sbatch(EXAMPLE_SPEC)
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"gpus_per_node": 0}, "no ranks per node"),
        ({"gpus_per_node": 8, "time": "four hours"}, "is not sbatch syntax"),
        ({"gpus_per_node": 8, "signal_before_s": 20}, "too short"),
        ({"gpus_per_node": 8, "nodes": 0}, "must be >= 1"),
        ({"gpus_per_node": 8, "max_restarts": -1}, "--max-restarts -1 must be >= 0"),
    ],
)
def test_sbatch_spec_errors(kwargs, error):
    with pytest.raises(ConfigError, match=error):
        render_sbatch(SbatchSpec(config="c.yaml", **kwargs))


def test_slurm_submit_dry_run_prints_the_script(capsys, dataset):
    out = dry_run(
        capsys,
        "slurm",
        "submit",
        str(REPO / "configs" / "tiny.yaml"),
        f"data.path={dataset}",
        "--nodes=1",
        "--nproc-per-node=2",
        "--time=30",
        "--dry-run",
    )
    assert out.startswith("#!/bin/bash") and "#SBATCH --job-name=dist-llm-tiny" in out
    assert f"#SBATCH --chdir={os.getcwd()}" in out and "--standalone" in out and sys.executable in out


def test_example_script_is_current():
    """launch/pretrain.sbatch is what the renderer writes for EXAMPLE_SPEC; regenerate it with
    `python -m tests.unit.test_launch` after changing the template."""
    assert EXAMPLE.read_text() == render_sbatch(EXAMPLE_SPEC)


if __name__ == "__main__":
    EXAMPLE.write_text(render_sbatch(EXAMPLE_SPEC))
