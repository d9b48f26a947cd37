"""`dist-llm env` under two torchrun "nodes" on 127.0.0.1: rank 0 gathers both ranks' facts over
gloo and reports them compared, and a failure on the other node alone fails the launch on both."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, free_port


@pytest.mark.distributed
def test_two_nodes_report_to_rank_0_and_share_the_verdict():
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NCCL_", "GLOO_"))}
    env["OMP_NUM_THREADS"] = "1"
    # Node 1 names an interface that does not exist: its own check fails, and rank 0 sees the
    # NCCL settings differ between the nodes.
    node_env = [env, {**env, "NCCL_SOCKET_IFNAME": "doesnotexist"}]
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                f"--node_rank={rank}",
                "--nproc_per_node=1",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                "-m",
                "dist_llm.cli",
                "env",
                "--json",
                "--timeout",
                "60",
            ],
            cwd=REPO,
            env=node_env[rank],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=180) for node in nodes]
    assert outputs[1][0] == "", "only rank 0 prints the report"
    report = json.loads(outputs[0][0])
    checks = {(c["name"], c["status"]): c for c in report["checks"]}

    assert [r["launch"]["rank"] for r in report["ranks"]] == [0, 1]
    assert report["facts"]["launch"]["nnodes"] == 2
    assert ("ranks", "OK") in checks and "2 ranks" in checks[("ranks", "OK")]["message"]
    assert ("same_versions", "OK") in checks, report["checks"]
    assert not [
        c
        for c in report["checks"]
        if c["name"].startswith("same_") and c["name"] != "same_nccl_env" and c["status"] != "OK"
    ]
    assert checks[("master_port", "OK")]["ranks"] == [0, 1], "the store answers from both nodes"
    assert checks[("nccl_socket_ifname", "FAIL")]["ranks"] == [1]
    assert "NCCL_SOCKET_IFNAME=doesnotexist on ranks 1" in checks[("same_nccl_env", "WARN")]["message"]
    assert report["status"] == "FAIL"
    assert [n.returncode for n in nodes] == [1, 1], "\n".join(err[-3000:] for _, err in outputs)
