"""Two "nodes" on 127.0.0.1 train exactly like one node with two ranks: the per-node command of the
rendered sbatch script (run by bash with the variables SLURM's shell would set) and `dist-llm launch
--nnodes 2` (c10d rendezvous, ranks handed out as nodes join) give bitwise-equal losses."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dist_llm.launch.sbatch import SbatchSpec, node_command, render_sbatch, shell_join
from tests.conftest import REPO, SMALL_MODEL, free_port, run_train, train_losses


def sbatch_node(spec: SbatchSpec, port: int) -> list[str]:
    """One node's srun task as the job's shell runs it: the command exactly as the script has it."""
    command = shell_join(node_command(spec))
    assert command in render_sbatch(spec)
    return ["bash", "-c", f"MASTER_ADDR=127.0.0.1 MASTER_PORT={port} SLURM_JOB_ID=test-job; exec {command}"]


def launch_node(config: str, overrides: list[str], port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dist_llm.cli",
        "launch",
        config,
        *overrides,
        "--nnodes=2",
        "--nproc-per-node=1",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        "--rdzv-id=test-job",
        "--resume=none",
    ]


@pytest.fixture(scope="module")
def one_node_losses(tmp_path_factory, dataset) -> dict[int, float]:
    single = str(tmp_path_factory.mktemp("single"))
    run_train(single, dataset, STEPS, nproc=2)
    return train_losses(single)


STEPS = ["train.max_steps=5", "train.precision=fp32"]


@pytest.mark.distributed
@pytest.mark.parametrize("how", ["sbatch", "launch"])
def test_two_nodes_match_one_node_two_ranks(tmp_path, dataset, one_node_losses, how):
    overrides = [*STEPS, f"data.path={dataset}", *SMALL_MODEL]
    multi = str(tmp_path / "multi")
    config = str(REPO / "configs" / "tiny.yaml")
    port = free_port()
    if how == "sbatch":
        spec = SbatchSpec(
            config=config, overrides=overrides, nodes=2, nproc_per_node=1, run_dir=multi, workdir=str(REPO)
        )
        commands = [sbatch_node(spec, port)] * 2
    else:
        commands = [launch_node(config, [*overrides, f"logging.run_dir={multi}"], port)] * 2
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for cmd in commands
    ]
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert train_losses(multi) == one_node_losses
