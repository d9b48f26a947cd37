"""Command lines for the `deepspeed` launcher (hostfile-driven). Library code so it is unit-tested."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dist_llm.errors import ConfigError

# The launchers `deepspeed --launcher` accepts for multi-node runs: pdsh reaches the hosts over SSH;
# the MPI flavours start ranks with their mpirun; slurm with srun inside an allocation.
DS_LAUNCHERS = ("pdsh", "openmpi", "mvapich", "impi", "mpich", "slurm")

_LINE = re.compile(r"^(\S+)\s+slots=(\d+)\s*$")


@dataclass(frozen=True)
class Host:
    name: str
    slots: int


def read_hostfile(path: str) -> list[Host]:
    """The hosts of a DeepSpeed hostfile (`<hostname> slots=<N>` per line, `#` comments), checked the
    way the launcher would fail on them later, but with the file and line named."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise ConfigError(
            f"hostfile not found: {path} (one line per node: '<hostname> slots=<GPUs>')"
        ) from None
    hosts: list[Host] = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        match = _LINE.match(text)
        if not match or int(match.group(2)) < 1:
            raise ConfigError(
                f"{path}:{number}: {text!r} should look like '<hostname> slots=<N>' with N >= 1"
            )
        if any(h.name == match.group(1) for h in hosts):
            raise ConfigError(f"{path}:{number}: host {match.group(1)} is listed twice")
        hosts.append(Host(match.group(1), int(match.group(2))))
    if not hosts:
        raise ConfigError(f"{path}: no hosts (one line per node: '<hostname> slots=<GPUs>')")
    if len({h.slots for h in hosts}) > 1:
        raise ConfigError(
            f"{path}: hosts have different slots "
            f"({', '.join(f'{h.name}={h.slots}' for h in hosts)}); "
            "dist_llm needs the same number of ranks on every node"
        )
    return hosts


def deepspeed_command(
    args: list[str],
    hostfile: str,
    master_addr: str,
    master_port: int = 29500,
    node_rank: int | None = None,
    launcher: str = "pdsh",
) -> list[str]:
    """`deepspeed --hostfile H ... --module dist_llm.cli <args>`.

    With `node_rank` the launcher runs only this node's ranks (`--no_ssh`, for clusters without
    passwordless SSH: start the same command on every node); without it, the launcher reaches the
    other hosts of the hostfile itself with `launcher` (pdsh over SSH, an MPI's mpirun, or srun).
    `--no_local_rank`: our ranks read LOCAL_RANK from the environment, so no `--local_rank`
    argument is appended to the CLI.
    """
    if launcher not in DS_LAUNCHERS:
        raise ConfigError(f"deepspeed launcher {launcher!r} is not one of {list(DS_LAUNCHERS)}")
    cmd = [
        "deepspeed",
        f"--hostfile={hostfile}",
        f"--master_addr={master_addr}",
        f"--master_port={master_port}",
        "--no_local_rank",
    ]
    if node_rank is not None:
        cmd += ["--no_ssh", f"--node_rank={node_rank}"]
    elif launcher != "pdsh":
        cmd.append(f"--launcher={launcher}")
    return cmd + ["--module", "dist_llm.cli", *args]
