"""Command lines for torchrun. Library code (not a shell script) so it is unit-tested."""

from __future__ import annotations

import os
import sys

# SIGUSR1 is what SLURM sends before a time limit (`--signal=USR1@T`); torchrun must pass it on to the
# ranks (which checkpoint and exit) instead of dying from it: by default only these four are handled.
SIGNALS_TO_FORWARD = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def in_torchrun() -> bool:
    """True inside a process torchrun started (it exports these for every worker)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def torchrun_command(
    args: list[str],
    nproc_per_node: int,
    nnodes: int = 1,
    rdzv_endpoint: str = "127.0.0.1:29500",
    rdzv_id: str = "dist-llm",
    max_restarts: int = 0,
    shutdown_timeout_s: int | None = None,
    python: str = sys.executable,
) -> list[str]:
    """`python -m torch.distributed.run ... -m dist_llm.cli <args>`.

    One node: `--standalone` (a private rendezvous on a free port). Several nodes: the c10d
    rendezvous, the same command on every node: the first torchrun to reach `rdzv_endpoint`
    (host:port of one of the nodes) hosts the store and ranks are handed out as nodes join, so no
    node needs to know its own rank. `shutdown_timeout_s` is how long ranks get to write their
    checkpoint after a stop signal before torchrun kills them. The module form works without a
    `torchrun` script on PATH and uses the same interpreter as the caller.
    """
    cmd = [
        python,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc_per_node}",
        f"--max_restarts={max_restarts}",
        f"--signals_to_handle={SIGNALS_TO_FORWARD}",
    ]
    if shutdown_timeout_s is not None:
        cmd.append(f"--shutdown_timeout={shutdown_timeout_s}")
    if nnodes == 1:
        cmd.append("--standalone")
    else:
        cmd += [
            f"--nnodes={nnodes}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={rdzv_endpoint}",
            f"--rdzv_id={rdzv_id}",
        ]
    return cmd + ["-m", "dist_llm.cli", *args]
