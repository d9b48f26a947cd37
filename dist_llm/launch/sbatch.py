"""The sbatch script of a pretraining job: one srun task per node, each running torchrun for that
node's ranks; the nodes meet at a c10d rendezvous on the allocation's first node. Library code so
the exact text is unit-tested and the per-node command can be run without a scheduler."""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass, field

from dist_llm.errors import ConfigError
from dist_llm.launch.torchrun import torchrun_command

_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


@dataclass
class SbatchSpec:
    config: str
    """The training config, as the job will see it (relative to `workdir` or absolute)."""
    overrides: list[str] = field(default_factory=list)
    nodes: int = 1
    gpus_per_node: int = 0
    """GPUs to request per node (0: a CPU partition)."""
    nproc_per_node: int = 0
    """Ranks per node; 0 = gpus_per_node (one rank per GPU)."""
    cpus_per_task: int = 0
    """CPUs for each node's task (torchrun and all its ranks); 0 = the partition's default."""
    partition: str = ""
    time: str = ""
    """Time limit in sbatch syntax (e.g. 4:00:00 or 2-00:00:00); empty = the partition's default."""
    account: str = ""
    job_name: str = ""
    run_dir: str = "runs/tiny"
    """The run directory (logging.run_dir): logs go to <run_dir>/slurm/."""
    signal_before_s: int = 300
    """SIGUSR1 reaches the job this long before its time limit: time to finish a step and commit a
    checkpoint. SLURM checks the signal time about once a minute, so leave at least 60 s slack."""
    max_restarts: int = 3
    """torchrun restarts of all ranks within the job after a failure (a rank that died, or timed out
    as hung: `train.hang_timeout_s`), each from the last committed checkpoint."""
    rdzv_port: int = 0
    """c10d rendezvous port on the first node; 0 = 20000 + job id % 10000, so jobs sharing a node
    do not collide."""
    workdir: str = "."
    python: str = sys.executable
    sbatch_args: list[str] = field(default_factory=list)
    """Extra `#SBATCH` options, e.g. --exclusive, --qos=high, --constraint=h100."""
    srun_args: list[str] = field(default_factory=list)
    """Extra srun options, e.g. pyxis' --container-image=... --container-mounts=..."""

    @property
    def ranks_per_node(self) -> int:
        return self.nproc_per_node or self.gpus_per_node

    def check(self) -> None:
        if self.nodes < 1:
            raise ConfigError(f"--nodes {self.nodes} must be >= 1")
        if self.max_restarts < 0:
            raise ConfigError(f"--max-restarts {self.max_restarts} must be >= 0")
        if self.gpus_per_node < 0 or self.nproc_per_node < 0:
            raise ConfigError("--gpus-per-node and --nproc-per-node must be >= 0")
        if self.ranks_per_node < 1:
            raise ConfigError(
                "no ranks per node: give --gpus-per-node G (one rank per GPU) or, on a CPU "
                "partition, --nproc-per-node N"
            )
        if self.time and not _TIME.match(self.time):
            raise ConfigError(f"--time {self.time!r} is not sbatch syntax (MM, HH:MM:SS or D-HH:MM:SS)")
        if self.signal_before_s < 60:
            raise ConfigError(
                f"--signal-before {self.signal_before_s}s is too short: "
                "SLURM checks signal times about once a minute; "
                "give at least 60 s plus the time to save a checkpoint"
            )


def _word(arg: str) -> str:
    """Shell-quote one argument, but leave `${VAR}` references for the job's shell to expand."""
    if "${" in arg:
        if re.search(r'["\\`]', arg):
            raise ConfigError(f"argument {arg!r} mixes shell variables with quotes or backslashes")
        return f'"{arg}"'
    return shlex.quote(arg)


def node_command(spec: SbatchSpec) -> list[str]:
    """What each node's srun task runs: torchrun for this node's ranks, resuming the run from its
    latest committed checkpoint (so a requeued job continues instead of starting over). The
    rendezvous address and id come from the job's shell (`${MASTER_ADDR}`, `${SLURM_JOB_ID}`)."""
    args = [
        "train",
        spec.config,
        *spec.overrides,
        f"launch.nnodes={spec.nodes}",
        f"launch.nproc_per_node={spec.ranks_per_node}",
        f"logging.run_dir={spec.run_dir}",
        "checkpoint.resume=auto",
    ]
    # Ranks get all but ~30 s of the signal lead to commit their checkpoint before torchrun kills them.
    return torchrun_command(
        args,
        spec.ranks_per_node,
        spec.nodes,
        rdzv_endpoint="${MASTER_ADDR}:${MASTER_PORT}",
        rdzv_id="${SLURM_JOB_ID}",
        max_restarts=spec.max_restarts,
        shutdown_timeout_s=max(30, spec.signal_before_s - 30),
        python=spec.python,
    )


def shell_join(words: list[str], width: int = 100, indent: str = "  ") -> str:
    """Quoted words as one shell command, continued over lines of about `width` characters."""
    lines = [""]
    for word in map(_word, words):
        if lines[-1] and len(lines[-1]) + len(word) + 1 > width:
            lines.append(indent)
        lines[-1] += word if lines[-1] in ("", indent) else f" {word}"
    return " \\\n".join(lines)


def render_sbatch(spec: SbatchSpec) -> str:
    spec.check()
    name = spec.job_name or "dist-llm"
    options = [f"--job-name={name}", f"--nodes={spec.nodes}", "--ntasks-per-node=1"]
    if spec.gpus_per_node:
        options.append(f"--gpus-per-node={spec.gpus_per_node}")
    for flag, value in (
        ("cpus-per-task", spec.cpus_per_task),
        ("partition", spec.partition),
        ("time", spec.time),
        ("account", spec.account),
    ):
        if value:
            options.append(f"--{flag}={value}")
    options += [
        f"--output={spec.run_dir}/slurm/%x-%j.out",
        "--open-mode=append",
        "--requeue",
        f"--signal=B:USR1@{spec.signal_before_s}",
        f"--comment=dist-llm:{os.path.join(spec.workdir, spec.run_dir)}",
        f"--chdir={spec.workdir}",
        *spec.sbatch_args,
    ]
    header = "\n".join(f"#SBATCH {shlex.quote(o)}" for o in options)
    # Since SLURM 22.05 srun no longer inherits the job's --cpus-per-task: without it again, the task
    # (torchrun and all its ranks) would be bound to one CPU where the cluster binds tasks to cores.
    cpus = [f"--cpus-per-task={spec.cpus_per_task}"] if spec.cpus_per_task else []
    srun = shell_join(["srun", "--kill-on-bad-exit=1", "--ntasks-per-node=1", *cpus, *spec.srun_args])
    port = spec.rdzv_port or "$((20000 + SLURM_JOB_ID % 10000))"
    return _TEMPLATE.format(header=header, port=port, srun=f"{srun} \\\n  {shell_join(node_command(spec))}")


_TEMPLATE = """#!/bin/bash
# A dist-llm pretraining job (written by `dist-llm slurm submit`; --dry-run prints it).
# One srun task per node runs torchrun for that node's ranks; the nodes meet at a c10d rendezvous on
# the first node. --requeue with checkpoint.resume=auto: every attempt continues from the latest
# committed checkpoint, whether it follows a time limit, a preemption or `scontrol requeue`.
{header}
set -uo pipefail

MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT={port}
# Each torchrun restart gets a rendezvous store of its own (pytorch/pytorch#135712).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
echo "[dist-llm] job $SLURM_JOB_ID attempt ${{SLURM_RESTART_COUNT:-0}} on $SLURM_JOB_NODELIST," \\
     "rendezvous $MASTER_ADDR:$MASTER_PORT"

# Before the time limit SLURM signals this shell (B:USR1 above). Pass the signal to every process of
# the job step: torchrun forwards it, the ranks finish their step, commit a checkpoint and exit;
# then the job goes back in the queue and its next attempt resumes.
requeue=0
on_time_limit() {{
  requeue=1
  echo "[dist-llm] time limit near: checkpointing, then requeueing"
  scancel --signal=USR1 "$SLURM_JOB_ID"
}}
trap on_time_limit USR1

{srun} &
pid=$!
# A trapped signal ends `wait` early: wait again until srun itself has exited.
while true; do
  wait "$pid"
  rc=$?
  kill -0 "$pid" 2>/dev/null || break
done
if [ "$requeue" = 1 ]; then
  echo "[dist-llm] requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
"""
