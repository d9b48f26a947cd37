"""A real SLURM job, submitted the way a user would (`dist-llm slurm submit`), watched with
`dist-llm slurm status`, interrupted twice and resumed twice:

1. the time-limit path: SIGUSR1 to the batch shell (what `--signal=B:USR1@N` delivers before the
   time limit; tests/integration/test_slurm_cluster.py shows SLURM delivering it) makes the script
   pass the signal to the ranks, which commit a checkpoint and exit, and the job requeues itself;
2. the preemption path: `dist-llm slurm requeue` (scontrol requeue: SIGTERM to every process, the
   job back in the queue).

Each attempt must resume where the previous one stopped, not restart: steps continue, the run
reaches max_steps once, and the log shows each attempt resuming from a later step."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dist_llm.checkpoint.discovery import committed_steps
from tests.conftest import REPO, SMALL_MODEL, read_metrics

MAX_STEPS = 300


def dist_llm(slurm, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "dist_llm.cli", *args],
        cwd=REPO,
        env=slurm.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def wait_for_checkpoint_after(slurm, job: str, checkpoints: str, step: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = committed_steps(checkpoints) if Path(checkpoints).exists() else []
        if steps and steps[0] > step:
            return steps[0]
        assert slurm.job_state(job)["JobState"] in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING"), (
            slurm.diagnostics(job)
        )
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint after step {step} within {timeout}s\n{slurm.diagnostics(job)}")


def wait_for_attempt(slurm, job: str, restarts: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = slurm.job_state(job)
        if record["JobState"] == "RUNNING" and record["Restarts"] == str(restarts):
            return
        time.sleep(0.1)
    raise AssertionError(
        f"attempt {restarts} of job {job} not running within {timeout}s\n{slurm.diagnostics(job)}"
    )


@pytest.mark.distributed
def test_job_checkpoints_before_time_limit_and_resumes_after_requeue(tmp_path, dataset, slurm):
    run = str(tmp_path / "run")
    checkpoints = f"{run}/checkpoints"
    job = dist_llm(
        slurm,
        "slurm",
        "submit",
        str(REPO / "configs" / "tiny.yaml"),
        f"data.path={dataset}",
        f"logging.run_dir={run}",
        f"train.max_steps={MAX_STEPS}",
        "checkpoint.interval=10",
        "train.precision=fp32",
        *SMALL_MODEL,
        "--nproc-per-node=2",
        "--cpus-per-task=2",
        "--time=10",
        "--signal-before=120",
    ).strip()

    first = wait_for_checkpoint_after(slurm, job, checkpoints, 0)
    status = dist_llm(slurm, "slurm", "status", job)
    assert re.search(rf"^{job}\s+RUNNING .* step \d+ loss \d", status, re.M), status
    slurm.signal(job, "USR1", batch=True)  # what SLURM sends the batch shell before the time limit
    wait_for_attempt(slurm, job, 1)
    second = wait_for_checkpoint_after(slurm, job, checkpoints, committed_steps(checkpoints)[0])
    dist_llm(slurm, "slurm", "requeue", job)
    job_record = slurm.wait_for(job, "COMPLETED", timeout=240)

    assert job_record["Restarts"] == "2", slurm.diagnostics(job)
    log = Path(job_record["StdOut"]).read_text()
    for attempt in range(3):
        assert f"job {job} attempt {attempt} " in log, log[-4000:]
    assert "time limit near: checkpointing, then requeueing" in log, log[-4000:]
    resumed = [int(s) for s in re.findall(r"resumed from \S+ at step (\d+)", log)]
    assert len(resumed) == 2 and first <= resumed[0] < resumed[1] and resumed[1] >= second, log[-4000:]
    # Every attempt continued from the checkpoint its predecessor wrote when stopped: each step was
    # trained and logged exactly once (a restart would repeat steps from 1, an older checkpoint some).
    steps = [m["step"] for m in read_metrics(run) if "loss" in m]
    assert steps == list(range(1, MAX_STEPS + 1)), steps
