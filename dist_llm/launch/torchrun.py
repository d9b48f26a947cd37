"""Command lines for torchrun. Library code (not a shell script) so it is unit-tested."""

from __future__ import annotations

import os
import sys


def in_torchrun() -> bool:
    """True inside a process torchrun started (it exports these for every worker)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def torchrun_command(args: list[str], nproc_per_node: int, nnodes: int = 1, node_rank: int = 0,
                     master_addr: str = "127.0.0.1", master_port: int = 29500,
                     max_restarts: int = 0) -> list[str]:
    """`python -m torch.distributed.run ... -m dist_llm.cli <args>`: the module form works without
    a `torchrun` script on PATH and uses the same interpreter as the caller."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc_per_node}",
           f"--max_restarts={max_restarts}"]
    if nnodes == 1:
        cmd += ["--standalone"]
    else:
        cmd += [f"--nnodes={nnodes}", f"--node_rank={node_rank}", f"--master_addr={master_addr}",
                f"--master_port={master_port}"]
    return cmd + ["-m", "dist_llm.cli", *args]
