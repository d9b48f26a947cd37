"""Smoke tests of the single-node SLURM cluster fixture (tests/integration/slurm_cluster.py), and
of the SLURM behaviours the training job's script relies on (the job itself, requeue included, is
tests/integration/test_slurm_job.py):

- a batch job runs `srun` steps and the tests' own `python` in the repository, and exits 0;
- a job asking for every CPU as one task (`--ntasks-per-node=1 --cpus-per-task=2`) starts;
- `--signal=B:USR1@N` reaches the batch shell before the time limit (never later than N seconds
  before it; up to 30 s earlier, slurmctld's time-limit check period);
- `scancel --signal=USR1` reaches every process of every srun step, children and grandchildren
  of the task included (also one in its own session, as torchrun starts its workers), but not the
  batch shell; `--batch` only the batch shell. proctrack/linuxproc (the only process tracking that
  works in this container: no cgroups, and proctrack/pgid would miss torchrun's workers, which run
  in sessions of their own) finds a step's processes by walking parent links from its slurmstepd
  each time it signals, so a process whose parent died gets neither the signals nor the final
  SIGKILL: torchrun must survive the forwarded signal (`--signals_to_handle` includes SIGUSR1).
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO


def _epoch(slurm_time: str) -> float:
    """scontrol's StartTime etc. (local time, whole seconds) as a Unix time."""
    return datetime.fromisoformat(slurm_time).timestamp()


def _wait_lines(path: Path, count: int, timeout: float = 30, what: str = "") -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} has {len(lines)} of {count} lines {what}after {timeout}s: {lines}")
        time.sleep(0.05)


def test_batch_job_runs_srun_and_the_tests_python(slurm):
    script = slurm.script(
        'srun hostname\npython -c "import sys; print(sys.executable)"\npwd\n'
        'echo "restarts=${SLURM_RESTART_COUNT:-none}"\necho "$DIST_LLM_SMOKE"\n'
    )
    job_id = slurm.sbatch(script, env={"DIST_LLM_SMOKE": "from the test"})
    job = slurm.wait_for(job_id, "COMPLETED", timeout=30)
    assert job["ExitCode"] == "0:0"
    assert slurm.output(job_id).splitlines() == [
        slurm.node,
        sys.executable,
        str(REPO),
        "restarts=none",
        "from the test",
    ]


def test_a_job_gets_every_cpu_as_one_task(slurm):
    """How a training job asks for the node: one srun task (torchrun) with all CPUs for its ranks.
    Since 22.05 srun no longer reads SLURM_CPUS_PER_TASK (release notes): pass --cpus-per-task
    to srun again (or export SRUN_CPUS_PER_TASK), as this script does."""
    script = slurm.script(
        'srun --cpus-per-task="$SLURM_CPUS_PER_TASK" python -c "import os; '
        "print(os.environ['SLURM_CPUS_PER_TASK'], len(os.sched_getaffinity(0)))\"\n"
    )
    job_id = slurm.sbatch(script, "--nodes=1", "--ntasks-per-node=1", f"--cpus-per-task={slurm.cpus}")
    job = slurm.wait_for(job_id, "COMPLETED", timeout=30)
    assert job["NumCPUs"] == str(slurm.cpus)
    assert slurm.output(job_id).split() == [str(slurm.cpus), str(os.cpu_count())]


def test_time_limit_warning_signal_reaches_the_batch_shell(slurm, tmp_path):
    """--signal=B:USR1@N with the shortest time limit (1 minute; --time=0:20 is rounded up).
    slurmctld tests time limits every 30 s and sends the warning at the first test that finds the
    job within N + 30 s of its end, so with N=30 it comes at the first test after the start:
    0-30 s into the job, never after end - N."""
    n = 30
    got = tmp_path / "usr1"
    script = slurm.script(f"""\
trap 'date +%s.%N > {got}; exit 0' USR1
sleep 600 &
wait
exit 3
""")
    job_id = slurm.sbatch(script, "--time=1", f"--signal=B:USR1@{n}")
    job = slurm.wait_for(job_id, "COMPLETED", timeout=60 + 35)
    assert job["TimeLimit"] == "00:01:00"
    started, delivered = _epoch(job["StartTime"]), float(got.read_text())
    planned = started + 60 - n
    early = planned - delivered
    print(f"USR1 came {early:.1f}s before end-{n}s, {delivered - started:.1f}s after the job started")
    assert -2 <= early <= 30 + 2, f"USR1 {early:.1f}s before end-{n}s"


STEP_CHILD = """\
import os, signal, sys, time
log, name, handle = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
def note(event):
    with open(log, "a") as f:
        f.write(f"{name} {event} {os.getpid()}\\n")
if handle:
    signal.signal(signal.SIGUSR1, lambda *_: note("USR1"))
note("up")
while True:
    time.sleep(0.05)
"""

# The srun task is a bash that traps USR1 and starts python children: one handling USR1, one with
# the default disposition (USR1 kills it), one in a session of its own, and one grandchild (under
# a bash that cannot exec it away). The batch shell traps USR1 and has a python child of its own.
STEP = """\
#!/bin/bash
log=$1; child=$2
trap 'echo "step-bash USR1 $$" >> $log' USR1
python $child $log step-child 1 &
python $child $log step-default 0 &
setsid python $child $log step-setsid 1 &
bash -c "python $child $log step-grandchild 1; true" &
echo "step-bash up $$" >> $log
while true; do sleep 0.1; done
"""

BATCH = """\
log=$1; child=$2; step=$3
trap 'echo "batch USR1 $$" >> $log' USR1
python $child $log batch-child 1 &
srun $step $log $child &
echo "batch up $$" >> $log
while true; do sleep 0.1; done
"""

STEP_PROCS = {"step-bash", "step-child", "step-setsid", "step-grandchild"}
BATCH_PROCS = {"batch", "batch-child"}


@pytest.mark.parametrize(
    "flags, expected",
    [
        ({}, STEP_PROCS),
        ({"batch": True}, {"batch"}),
    ],
    ids=["steps", "batch"],
)
def test_scancel_signal_reaches(slurm, tmp_path, flags, expected):
    child, step, log = tmp_path / "child.py", tmp_path / "step.sh", tmp_path / "log"
    child.write_text(STEP_CHILD)
    step.write_text(STEP)
    step.chmod(0o755)
    job_id = slurm.sbatch(slurm.script(BATCH), script_args=[str(log), str(child), str(step)])
    slurm.wait_for(job_id, "RUNNING")
    up = {line.split()[0]: int(line.split()[2]) for line in _wait_lines(log, 7, what="(every process up) ")}
    assert set(up) == STEP_PROCS | BATCH_PROCS | {"step-default"}

    slurm.signal(job_id, "USR1", **flags)
    deadline = time.monotonic() + 10
    while True:
        got = {line.split()[0] for line in log.read_text().splitlines() if line.split()[1] == "USR1"}
        if got >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    time.sleep(1)  # and nothing else comes
    got = {line.split()[0] for line in log.read_text().splitlines() if line.split()[1] == "USR1"}
    assert got == expected, slurm.diagnostics(job_id)
    # A process of a signalled step that does not handle USR1 dies of it (the default action).
    default_pid = up["step-default"]
    dead = not psutil.pid_exists(default_pid) or psutil.Process(default_pid).status() == psutil.STATUS_ZOMBIE
    assert dead == ("step-bash" in expected)
    assert slurm.job_state(job_id)["JobState"] == "RUNNING"
