"""SIGTERM / SIGUSR1 to a running 2-rank job: it finishes the step, commits a checkpoint, exits
with EXIT_PREEMPTED, and the requeued run resumes to the same result as an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest

from dist_llm.callbacks.signals import EXIT_PREEMPTED
from dist_llm.checkpoint.discovery import committed_steps
from tests.conftest import REPO, read_metrics, run_train, train_command, train_losses

STEPS = 80
COMMON = [f"train.max_steps={STEPS}", "train.precision=fp32", "checkpoint.interval=0"]


def _wait_for_steps(run_dir: str, proc: subprocess.Popen, count: int, timeout: float = 120) -> None:
    path = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        if os.path.exists(path) and sum(1 for m in read_metrics(run_dir) if "loss" in m) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"run did not reach {count} steps in {timeout}s")


def _preempt(run: str, dataset: str, sig: signal.Signals, after_steps: int) -> int:
    """Start (or resume) the 2-rank job, send `sig` once it has logged `after_steps` steps in all,
    check that it committed a checkpoint at the step it stopped and exited non-zero; that step."""
    proc = subprocess.Popen(
        train_command(run, dataset, [*COMMON, "checkpoint.resume=auto"], nproc=2),
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    _wait_for_steps(run, proc, after_steps)
    if sig == signal.SIGTERM:
        os.kill(proc.pid, sig)  # torchrun's agent forwards SIGTERM to its workers
    else:  # USR1 is not forwarded by torchrun: it goes to the ranks (`scancel --signal=USR1 --full`)
        for worker in psutil.Process(proc.pid).children(recursive=True):
            worker.send_signal(sig)
    output = proc.communicate(timeout=120)[0]
    stopped_at = max(train_losses(run))
    assert stopped_at < STEPS, "the job must stop early, not run to the end"
    committed = committed_steps(os.path.join(run, "checkpoints"))
    assert committed and max(committed) == stopped_at, (committed, stopped_at, output[-3000:])
    assert proc.returncode != 0, "a preempted job must not look finished to the scheduler"
    if sig == signal.SIGUSR1:
        assert f"exitcode  : {EXIT_PREEMPTED}" in output, output[-3000:]
    return stopped_at


@pytest.mark.distributed
def test_signals_save_commit_exit_and_resume_exactly(tmp_path, dataset):
    """SIGTERM (torchrun forwards it), then SIGUSR1 to the ranks in the resumed job (SLURM's
    `--signal`), then a run to the end: the same losses as an uninterrupted run."""
    run = str(tmp_path / "preempted")
    first = _preempt(run, dataset, signal.SIGTERM, 5)
    assert first >= 5
    # Steps logged so far count the first leg's; the resumed leg logs from first + 1.
    second = _preempt(run, dataset, signal.SIGUSR1, first + 5)
    assert second > first
    run_train(run, dataset, [*COMMON, "checkpoint.resume=auto"], nproc=2)
    straight = str(tmp_path / "straight")
    run_train(straight, dataset, COMMON, nproc=2)
    assert train_losses(run) == train_losses(straight)
