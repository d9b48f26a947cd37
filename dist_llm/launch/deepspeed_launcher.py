"""Command lines for the `deepspeed` launcher (hostfile-driven). Library code so it is unit-tested."""

from __future__ import annotations


def deepspeed_command(args: list[str], hostfile: str, master_addr: str, master_port: int = 29500,
                      node_rank: int | None = None) -> list[str]:
    """`deepspeed --hostfile H ... --module dist_llm.cli <args>`.

    With `node_rank` the launcher runs only this node's ranks (`--no_ssh`, for clusters without
    passwordless SSH: start the same command on every node); without it, the launcher reaches the
    other hosts of the hostfile over SSH/pdsh itself. `--no_local_rank`: our ranks read LOCAL_RANK
    from the environment, so no `--local_rank` argument is appended to the CLI.
    """
    cmd = ["deepspeed", f"--hostfile={hostfile}", f"--master_addr={master_addr}",
           f"--master_port={master_port}", "--no_local_rank"]
    if node_rank is not None:
        cmd += ["--no_ssh", f"--node_rank={node_rank}"]
    return cmd + ["--module", "dist_llm.cli", *args]
