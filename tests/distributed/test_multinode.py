"""Two torchrun "nodes" on 127.0.0.1 (--nnodes 2, --node_rank 0/1) train exactly like one node
with two ranks: same rendezvous-assigned ranks, same gloo all-reduce, bitwise-equal losses."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, SMALL_MODEL, free_port, run_train, train_losses


@pytest.mark.distributed
def test_two_nodes_match_one_node_two_ranks(tmp_path, dataset):
    overrides = ["train.max_steps=5", "train.precision=fp32", f"data.path={dataset}", *SMALL_MODEL]
    single = str(tmp_path / "single")
    run_train(single, dataset, overrides[:2], nproc=2)

    multi = str(tmp_path / "multi")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
             "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
             "-m", "dist_llm.cli", "train", str(REPO / "configs" / "tiny.yaml"),
             f"logging.run_dir={multi}", "launch.nproc_per_node=1", "launch.nnodes=2", *overrides],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)
    ]
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert train_losses(multi) == train_losses(single)
