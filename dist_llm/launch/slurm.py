"""Talking to SLURM: submit a rendered sbatch script, list jobs, cancel or requeue them. Thin wrappers
over sbatch/squeue/scancel/scontrol so their errors reach the user verbatim."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass

from dist_llm.errors import ConfigError
from dist_llm.launch.sbatch import SbatchSpec, render_sbatch

COMMENT_PREFIX = "dist-llm:"  # our jobs carry their run directory in the job comment, for `status`
_SQUEUE_FORMAT = "%i|%j|%T|%M|%l|%D|%R|%k"


def _slurm(*cmd: str) -> str:
    if shutil.which(cmd[0]) is None:
        raise ConfigError(
            f"{cmd[0]} not found on PATH: run this on a SLURM login node (or install slurm-client)"
        )
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise ConfigError(
            f"{' '.join(cmd)} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}"
        )
    return proc.stdout


def submit(spec: SbatchSpec) -> tuple[str, str]:
    """(job id, path of the submitted script). The script is kept next to the job's logs."""
    script = render_sbatch(spec)
    log_dir = os.path.join(spec.workdir, spec.run_dir, "slurm")
    os.makedirs(log_dir, exist_ok=True)  # sbatch does not create the --output directory
    path = os.path.join(log_dir, f"submit-{time.strftime('%Y%m%d-%H%M%S')}.sbatch")
    with open(path, "w", encoding="utf-8") as f:
        f.write(script)
    # --parsable prints "jobid" or "jobid;cluster".
    return _slurm("sbatch", "--parsable", path).strip().split(";")[0], path


@dataclass
class JobRow:
    job_id: str
    name: str
    state: str
    elapsed: str
    time_limit: str
    nodes: str
    where: str
    """squeue's NODELIST(REASON): the nodes of a running job, why a pending one waits."""
    run_dir: str
    """Run directory of a dist-llm job ('' for other jobs)."""


def list_jobs(job_ids: list[str]) -> list[JobRow]:
    """squeue rows for these jobs (all of the user's jobs if none), finished ones included while
    SLURM still remembers them."""
    cmd = ["squeue", "--noheader", "--states=all", f"--format={_SQUEUE_FORMAT}"]
    cmd += [f"--jobs={','.join(job_ids)}"] if job_ids else ["--me"]
    rows = []
    for line in _slurm(*cmd).splitlines():
        fields = line.split("|", 7)
        if len(fields) < 8:
            continue
        comment = fields[7]
        run_dir = comment[len(COMMENT_PREFIX) :] if comment.startswith(COMMENT_PREFIX) else ""
        rows.append(JobRow(*fields[:7], run_dir=run_dir))
    return rows


def latest_progress(run_dir: str) -> str:
    """'step 120 loss 3.21' from the run's metrics log, or '' before the first logged step."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return ""
    last = ""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if '"loss"' in line:
                last = line
    try:
        record = json.loads(last) if last else None
    except json.JSONDecodeError:  # a line being written right now
        return ""
    return f"step {record['step']} loss {record['loss']:.4f}" if record else ""


def cancel(job_ids: list[str]) -> None:
    _slurm("scancel", *job_ids)


def requeue(job_ids: list[str]) -> None:
    """Stop the jobs now and put them back in the queue: each rank gets SIGTERM, commits a
    checkpoint if it can within the cluster's KillWait, and the next attempt resumes."""
    _slurm("scontrol", "requeue", ",".join(job_ids))
