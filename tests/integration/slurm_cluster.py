"""A real single-node SLURM cluster for the tests: Debian's `slurm-wlm` and `munge` packages
(slurmctld + slurmd + munged) started by hand on this machine, as root, with everything in a
per-session directory: a generated slurm.conf, state/spool/log directories, pid files, a private
MUNGE key and socket. Clients reach it through `SlurmCluster.env` (SLURM_CONF), so the machine's
own /etc/slurm and /etc/munge are neither read nor touched, and a session running beside this one
(its own ports, socket and directories) is not disturbed.

Fixtures (exposed to tests/integration by one import line in conftest.py):

- `slurm_cluster` (session): the running `SlurmCluster`, started once and stopped at the end of
  the session, leaving no daemon or job process behind.
- `slurm` (per test): the same cluster; when the test ends, every job still queued or running is
  cancelled and its processes SIGKILLed, and the fixture waits until no job is left, so tests do
  not see each other's jobs.

Both skip when the binaries are missing or the tests do not run as root, except under CI=true,
where they fail instead (CI installs the packages in .ci/run).

Timings measured on the 2-core CI container:

- start: about 3.5 s: 0.5 s until `sinfo` shows the node idle, then a probe job with one srun
  step, which also waits out slurmctld's first scheduling pass (about 3 s after it starts);
- sbatch to RUNNING: 0.2-1 s (`batch_sched_delay=0`, `sched_interval=1`: the default
  batch_sched_delay=3 s deferred every submission to a 3 s tick);
- `scontrol requeue` to RUNNING again: 5.5-7 s. SLURM holds a requeued job back for the
  credential lifetime, `AuthInfo=cred_expire` (default 120 s; 5 s is the smallest value
  slurmctld accepts: below it logs "AuthInfo=cred_expire=4 invalid" and uses 120), then the main
  scheduler starts it at its next pass (`sched_interval`, default 60 s; 1 s here). The job's
  processes must also have exited: the requeue SIGTERMs them (SIGKILL after KillWait), so a job
  that spends time checkpointing after that SIGTERM restarts that much later;
- `--signal=[B:]SIG@N`: slurmctld tests time limits and warning signals every 30 s (its
  compiled-in PERIODIC_TIMEOUT: no slurm.conf setting changes it) and sends the signal at the
  first test that finds the job within N + 30 s of its end, so it arrives 0-30 s before end - N,
  never after (unless the job started less than N + 30 s before its end: then at the first test
  after the start). Time limits are whole minutes (`--time=0:20` is rounded up to 1 minute); the
  time limit itself is enforced by the same 30 s test, so 0-30 s late (SIGTERM, SIGKILL after
  KillWait).
- cancel: `scancel` (also `scancel --signal=KILL`) sends SIGCONT + SIGTERM and SIGKILL only after
  KillWait; the fixtures' cleanup SIGKILLs job processes itself (`cancel_all`).

Process tracking is proctrack/linuxproc (no cgroups in the container; proctrack/pgid would miss
torchrun's workers, which start in sessions of their own): SLURM finds a step's processes by
walking parent links down from its slurmstepd each time it signals. Every descendant is reached,
whatever its session or process group, but a process whose parent died (reparented to init)
escapes all signals, the final SIGKILL included; if it holds the step's stdout the step then
waits for it forever and the job stays COMPLETING.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO, free_port

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("munge", "sbatch", "srun", "scontrol", "squeue", "scancel", "sinfo")
# JobState values after which a job never runs again by itself (a requeue makes it PENDING again).
FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "SPECIAL_EXIT",
        "REVOKED",
    }
)
# Every daemon and job process carries this variable (value: "<pid>:<start time>" of the pytest
# process that owns the cluster): how teardown, and the next session after a crash, find them.
OWNER_VAR = "DIST_LLM_TEST_SLURM_OWNER"
MUNGE_DIR_PREFIX = "dist-llm-munge-"


class SlurmUnavailable(Exception):
    """The binaries are missing or we are not root: the tests cannot run a cluster here."""


class SlurmError(RuntimeError):
    """A SLURM command failed, a daemon died, or a job did not reach the awaited state in time.
    The message carries the job record and the tails of the job's output and the daemons' logs."""


class SlurmCluster:
    """One slurmctld + one slurmd (node `self.node`, every CPU of the machine, partition `debug`)
    + one munged, all configured under `root`.

    Use `env` for any SLURM command you run yourself (`subprocess.run(["squeue"], env=slurm.env)`);
    jobs submitted with it inherit it (sbatch exports the submitting environment), so `python` in a
    job script is the interpreter running the tests (its directory leads PATH) and `srun` inside the
    job talks to this cluster.

    `kill_wait`: seconds between SIGTERM and SIGKILL when a job is cancelled, requeued or hits its
    time limit (slurm.conf KillWait: the time a job has to save a checkpoint).
    `cred_expire`: seconds SLURM holds a requeued job back before it may start again (>= 5).
    `min_job_age`: seconds a finished job's record stays visible to `job_state` (there is no
    accounting database, so once purged its final state and exit code are gone).
    `debug`: SlurmctldDebug/SlurmdDebug level of the logs in `log_dir`.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        kill_wait: int = 30,
        cred_expire: int = 5,
        min_job_age: int = 3600,
        debug: str = "debug",
    ) -> None:
        if cred_expire < 5:
            raise ValueError("slurmctld rejects AuthInfo=cred_expire below 5 (and silently uses 120)")
        self.root = Path(root)
        self.kill_wait = kill_wait
        self.cred_expire = cred_expire
        self.min_job_age = min_job_age
        self.debug = debug
        self.conf_path = self.root / "slurm.conf"
        self.log_dir = self.root / "log"
        self.jobs_dir = self.root / "jobs"  # default place for job scripts and output files
        self.node = socket.gethostname().split(".")[0]
        self.hardware: dict[str, str] = {}
        self.cpus = 0
        self.owner = _owner_tag()
        self.munge_dir: Path | None = None
        self.munge_socket: Path | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = self._client_env()

    # -- lifecycle ---------------------------------------------------------------------------

    @staticmethod
    def check_available() -> None:
        """Raise SlurmUnavailable if this machine cannot run the cluster."""
        missing = [b for b in (*DAEMONS, *CLIENTS) if not shutil.which(b, path=_sbin_path())]
        if missing:
            raise SlurmUnavailable(f"missing {', '.join(missing)}: apt-get install slurm-wlm munge")
        if os.geteuid() != 0:
            raise SlurmUnavailable("slurmd must run as root (SlurmdUser=root) and these tests are not")

    def start(self, timeout: float = 30) -> SlurmCluster:
        """Start munged, slurmctld and slurmd; return once `sinfo` shows the node idle and a probe
        job has run an srun step. Kills what a crashed earlier session left running first."""
        self.check_available()
        sweep_stale()
        for sub in ("state", "spool", "run", "jobs", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        try:
            self._start_munge(timeout)
            self.hardware = self._detect_hardware()
            self.cpus = int(self.hardware["CPUs"])
            (self.root / "plugstack.conf").write_text("")  # not /etc/slurm/plugstack.conf
            self.conf_path.write_text(self._slurm_conf())
            self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf_path)])
            self._spawn("slurmd", ["slurmd", "-D", "-N", self.node, "-f", str(self.conf_path)])
            self.wait_node_idle(timeout)
            self._probe(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _probe(self, timeout: float) -> None:
        """Run one job with one srun step to completion: proves munge credentials, job launch and
        step launch work, and waits out slurmctld's first scheduling pass (about 3 s after it
        starts, whatever SchedulerParameters say), so the tests' first job starts as fast as later ones."""
        out = self.run(
            "sbatch",
            "--parsable",
            f"--chdir={self.jobs_dir}",
            "--job-name=probe",
            f"--output={self.jobs_dir}/probe-%j.out",
            "--wrap",
            "srun true",
        ).stdout
        self.wait_for(out.strip().split(";")[0], "COMPLETED", timeout=timeout, poll=0.1)

    def stop(self) -> None:
        """SIGKILL every job, stop the daemons, then kill any process still carrying this cluster's
        mark (job processes that left the job's process tree). Safe to call twice."""
        if self.alive("slurmctld"):
            with contextlib.suppress(Exception):
                self.cancel_all(timeout=15)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is not None:
                _terminate(proc, grace=10)
        _kill_marked(lambda env: env[OWNER_VAR] == self.owner)
        if self.munge_dir is not None:
            shutil.rmtree(self.munge_dir, ignore_errors=True)
            self.munge_dir = None

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def wait_node_idle(self, timeout: float = 30) -> None:
        """Wait until the node is up and has no allocated CPUs."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for name in ("munged", "slurmctld", "slurmd"):
                if not self.alive(name):
                    raise SlurmError(
                        f"{name} exited ({self.procs[name].returncode}) while the "
                        f"cluster was starting\n{self.diagnostics()}"
                    )
            proc = self.run("sinfo", "-h", "-n", self.node, "-o", "%T", check=False)
            state = proc.stdout.strip()
            if proc.returncode == 0 and state == "idle":
                return
            time.sleep(0.1)
        raise SlurmError(
            f"node {self.node} not idle after {timeout}s (state {state!r})\n{self.diagnostics()}"
        )

    # -- commands ----------------------------------------------------------------------------

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 30, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """Run a SLURM client command (sinfo, squeue, scontrol, ...) against this cluster, with
        `env` added to `self.env`; raises SlurmError (with the daemons' logs) if it fails."""
        proc = subprocess.run(
            list(cmd), env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise SlurmError(
                f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}\n{self.diagnostics()}"
            )
        return proc

    def scontrol(self, *args: str) -> str:
        return self.run("scontrol", *args).stdout

    def script(self, body: str, name: str | None = None) -> Path:
        """Write an executable bash job script (`#!/bin/bash` + body) under `jobs_dir`."""
        path = Path(tempfile.mkstemp(prefix=f"{name or 'job'}-", suffix=".sh", dir=self.jobs_dir)[1])
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(0o755)
        return path

    def sbatch(
        self,
        script: Path | str,
        *options: str,
        script_args: Iterable[str] = (),
        chdir: Path | str = REPO,
        env: Mapping[str, str] | None = None,
    ) -> int:
        """`sbatch --parsable [options] script [script_args]`; returns the job id.

        `options` are sbatch options ("--time=1", "--signal=B:USR1@30", "--cpus-per-task=2", ...).
        The job runs in `chdir` (default: the repository, so `python -m dist_llm.cli` works) with
        `self.env` plus `env` as its environment (sbatch exports the submitting environment: the
        environment is the one at submission, a requeued job gets it again) and, unless the
        options name one, writes stdout+stderr to `jobs_dir/slurm-<jobid>.out` (`output(job_id)`
        reads it either way)."""
        cmd = ["sbatch", "--parsable", f"--chdir={chdir}"]
        if not any(o == "-o" or o.startswith("--output") for o in options):
            cmd.append(f"--output={self.jobs_dir}/slurm-%j.out")
        out = self.run(*cmd, *options, str(script), *script_args, env=env).stdout.strip()
        return int(out.split(";")[0])

    def job_state(self, job_id: int | str) -> dict[str, str]:
        """The job's record, `scontrol show job -o` as a dict: JobState, Reason, Restarts, ExitCode
        ("code:signal"), StartTime, EndTime, TimeLimit, NodeList, StdOut, ..."""
        return parse_record(self.scontrol("show", "job", "-o", str(job_id)))

    def wait_for(
        self, job_id: int | str, states: str | Iterable[str], timeout: float = 60, poll: float = 0.2
    ) -> dict[str, str]:
        """Wait until the job's JobState is one of `states`; return its record. Raises SlurmError
        (with the job's output and daemon logs) on timeout, or at once if the job reaches a final
        state that is not awaited (waiting for COMPLETED on a job that FAILED)."""
        wanted = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout
        while True:
            job = self.job_state(job_id)
            if job["JobState"] in wanted:
                return job
            if job["JobState"] in FINAL_STATES:
                raise SlurmError(
                    f"job {job_id} ended {job['JobState']} (ExitCode={job.get('ExitCode')}, "
                    f"Reason={job.get('Reason')}) while waiting for {sorted(wanted)}\n"
                    f"{self.diagnostics(job_id)}"
                )
            if time.monotonic() > deadline:
                raise SlurmError(
                    f"job {job_id} still {job['JobState']} (Reason={job.get('Reason')}) after "
                    f"{timeout}s waiting for {sorted(wanted)}\n{self.diagnostics(job_id)}"
                )
            time.sleep(poll)

    def requeue(self, job_id: int | str) -> None:
        """`scontrol requeue`: the job's processes get SIGTERM (SIGKILL after kill_wait), the job
        goes back to PENDING (Reason=BeginTime) and runs again about cred_expire + 1 s later with
        SLURM_RESTART_COUNT incremented."""
        self.scontrol("requeue", str(job_id))

    def signal(self, job_id: int | str, sig: str | int, *, batch: bool = False, full: bool = False) -> None:
        """`scancel --signal=sig`: by default to every step's processes (srun) but not the batch
        shell; `batch=True`: only the batch shell; `full=True`: the batch shell, its children and
        every step."""
        flags = ["--batch"] * batch + ["--full"] * full
        self.run("scancel", f"--signal={sig}", *flags, str(job_id))

    def cancel(self, job_id: int | str) -> None:
        self.run("scancel", str(job_id))

    def active_jobs(self) -> list[str]:
        """Ids of jobs pending, running or completing."""
        return self.run("squeue", "-h", "-o", "%i").stdout.split()

    def cancel_all(self, timeout: float = 30) -> None:
        """Cancel every job, SIGKILL every job process at once, and wait until no job is left.

        scancel alone is not enough for a quick, sure cleanup: it gives jobs KillWait seconds after
        SIGTERM (even `scancel --signal=KILL` goes through the same SIGTERM, KillWait, SIGKILL
        sequence), and with proctrack/linuxproc a process whose parent died (reparented to init)
        is no longer part of its job: SLURM's SIGKILL misses it, and if it holds the step's
        stdout the step waits for it forever ("Waiting for IO") and the job stays COMPLETING."""
        jobs = self.active_jobs()
        if jobs:
            self.run("scancel", *jobs, check=False)
            _kill_marked(lambda env: env[OWNER_VAR] == self.owner, jobs_only=True)
        deadline = time.monotonic() + timeout
        while self.active_jobs():
            if time.monotonic() > deadline:
                raise SlurmError(f"jobs still active {timeout}s after SIGKILL\n{self.diagnostics()}")
            time.sleep(0.2)

    # -- diagnostics -------------------------------------------------------------------------

    def output_path(self, job_id: int | str) -> Path:
        """The job's stdout file (scontrol expands %j and friends)."""
        return Path(self.job_state(job_id)["StdOut"])

    def output(self, job_id: int | str) -> str:
        return self.output_path(job_id).read_text(errors="replace")

    def log_tail(self, name: str, lines: int = 40) -> str:
        """Last lines of log_dir/<name>.log (munged, slurmctld, slurmd). munged's "Unauthorized
        credential for client UID=0" lines are left out: every SLURM daemon and slurmstepd logs one
        at start, on purpose (auth/munge checks that root cannot decode a credential meant for
        another uid)."""
        noise = "Unauthorized credential" if name == "munged" else None
        return _tail(self.log_dir / f"{name}.log", lines, drop=noise)

    def diagnostics(self, job_id: int | str | None = None, lines: int = 40) -> str:
        """What to read when something went wrong: the job's record and output, the daemons' logs."""
        parts = []
        if job_id is not None:
            try:
                job = self.job_state(job_id)
                parts.append(
                    f"--- job {job_id}: "
                    + " ".join(
                        f"{k}={job[k]}"
                        for k in ("JobState", "Reason", "ExitCode", "Restarts", "StartTime", "EndTime")
                        if k in job
                    )
                )
                for key in ("StdOut", "StdErr"):
                    if key in job and (key == "StdOut" or job[key] != job["StdOut"]):
                        parts.append(f"--- {key} {job[key]}:\n{_tail(Path(job[key]), lines)}")
            except Exception as e:  # the controller may be the problem
                parts.append(f"--- job {job_id}: no record ({e})")
        for name in ("slurmctld", "slurmd", "munged"):
            parts.append(f"--- {name}.log:\n{self.log_tail(name, lines)}")
        return "\n".join(parts)

    # -- internals ---------------------------------------------------------------------------

    def _client_env(self) -> dict[str, str]:
        # SLURM_* variables of an enclosing allocation would send srun/sbatch to the wrong job.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), _sbin_path()])
        env["SLURM_CONF"] = str(self.conf_path)
        env[OWNER_VAR] = self.owner
        return env

    def _spawn(self, name: str, cmd: list[str]) -> None:
        with open(self.log_dir / f"{name}.out", "ab") as out:
            self.procs[name] = subprocess.Popen(
                cmd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def _start_munge(self, timeout: float) -> None:
        """A private munged: its own key (root's, mode 0400: munged wants the key owned by the user
        it runs as) and socket. munged insists that every directory above its socket be
        executable by all, which pytest's 0700 temp directories are not, hence /tmp."""
        key = self.root / "munge.key"
        if not key.exists():
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(128))  # what `mungekey --create` writes: 1024 random bits
        self.munge_dir = Path(tempfile.mkdtemp(prefix=MUNGE_DIR_PREFIX, dir="/tmp"))
        self.munge_dir.chmod(0o755)
        (self.munge_dir / "owner").write_text(self.owner)
        self.munge_socket = self.munge_dir / "munge.socket"
        # -F: foreground, logs to stderr (the .out file); runs as root without --force here.
        with open(self.log_dir / "munged.log", "ab") as out:
            self.procs["munged"] = subprocess.Popen(
                [
                    "munged",
                    "-F",
                    f"--socket={self.munge_socket}",
                    f"--key-file={key}",
                    f"--pid-file={self.root / 'run' / 'munged.pid'}",
                    f"--seed-file={self.root / 'state' / 'munged.seed'}",
                ],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive("munged"):
                raise SlurmError(
                    f"munged exited ({self.procs['munged'].returncode}):\n{self.log_tail('munged')}"
                )
            probe = subprocess.run(
                ["munge", "-n", f"--socket={self.munge_socket}"], capture_output=True, env=self.env
            )
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise SlurmError(f"munged not answering after {timeout}s:\n{self.log_tail('munged')}")
            time.sleep(0.05)

    def _detect_hardware(self) -> dict[str, str]:
        """What `slurmd -C` detects (CPUs, sockets, cores, threads, memory): a node configured with
        more than that is drained at registration."""
        out = subprocess.run(
            ["slurmd", "-C"], env=self.env, capture_output=True, text=True, check=True, timeout=30
        ).stdout
        record = parse_record(out.splitlines()[0])
        keep = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
        return {k: record[k] for k in keep if k in record}

    def _slurm_conf(self) -> str:
        r = self.root
        hw = " ".join(f"{k}={v}" for k, v in self.hardware.items())
        return f"""\
# Generated by tests/integration/slurm_cluster.py for one test session.
ClusterName=distllmtest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: how long a requeued job waits before it may start again (default 120 s, min 5 s).
AuthInfo=socket={self.munge_socket},cred_expire={self.cred_expire}
StateSaveLocation={r / "state"}
SlurmdSpoolDir={r / "spool"}
SlurmctldPidFile={r / "run" / "slurmctld.pid"}
SlurmdPidFile={r / "run" / "slurmd.pid"}
SlurmctldLogFile={self.log_dir / "slurmctld.log"}
SlurmdLogFile={self.log_dir / "slurmd.log"}
SlurmctldDebug={self.debug}
SlurmdDebug={self.debug}
PlugStackConfig={r / "plugstack.conf"}
MailProg=/bin/true
# No systemd and no cgroup delegation in the container: track job processes through /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
# Schedule a submitted batch job at once (default: deferred up to batch_sched_delay=3 s) and scan
# the queue every second (default 60 s): what starts a requeued job when its BeginTime passes.
# (Not sched_min_interval=...: sched/builtin reads the first "interval=" in this line as its own.)
SchedulerParameters=batch_sched_delay=0,sched_interval=1
ReturnToService=2
JobRequeue=1
KillWait={self.kill_wait}
MinJobAge={self.min_job_age}
InactiveLimit=0
NodeName={self.node} NodeAddr=127.0.0.1 {hw} State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""


def parse_record(line: str) -> dict[str, str]:
    """`Key=value Key2=value two ...` (scontrol -o, slurmd -C) as a dict; a value runs to the next
    ` Key=`, so values with spaces survive."""
    keys = list(re.finditer(r"(?:^|\s)([A-Za-z][\w:/]*)=", line.strip()))
    text = line.strip()
    return {
        m.group(1): text[m.end() : keys[i + 1].start() if i + 1 < len(keys) else len(text)]
        for i, m in enumerate(keys)
    }


def sweep_stale() -> None:
    """Kill what a previous session left running when it died without teardown (SIGKILL, a
    crash): daemons and job processes whose owner process is gone, and its munge directories.
    Clusters of live sessions (another pytest beside this one) are left alone."""
    _kill_marked(lambda env: not _owner_alive(env[OWNER_VAR]))
    for d in Path("/tmp").glob(f"{MUNGE_DIR_PREFIX}*"):
        with contextlib.suppress(OSError):
            if not _owner_alive((d / "owner").read_text()):
                shutil.rmtree(d, ignore_errors=True)


def _owner_tag(pid: int | None = None) -> str:
    proc = psutil.Process(pid)
    return f"{proc.pid}:{proc.create_time():.2f}"


def _owner_alive(tag: str) -> bool:
    try:
        pid = int(tag.split(":")[0])
        return _owner_tag(pid) == tag
    except (ValueError, psutil.Error):
        return False


def _kill_marked(select: Callable[[dict[str, str]], bool], jobs_only: bool = False) -> None:
    """SIGKILL every process whose environment carries OWNER_VAR and satisfies `select` (never this
    process or its ancestors; with `jobs_only`, only job processes: SLURM_JOB_ID set, no
    slurmstepd), and wait for them to go."""
    spared = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    victims = []
    for proc in psutil.process_iter():
        if proc.pid in spared:
            continue
        try:
            env = _environ(proc.pid)
            if OWNER_VAR not in env or not select(env):
                continue
            if jobs_only and ("SLURM_JOB_ID" not in env or proc.name().startswith("slurmstepd")):
                continue
            proc.kill()
            victims.append(proc)
        except (psutil.Error, OSError):
            continue
    psutil.wait_procs(victims, timeout=5)


def _environ(pid: int) -> dict[str, str]:
    """/proc/<pid>/environ as a dict. Not psutil's Process.environ(): slurmstepd overwrites the
    start of its environment block with NULs (its process title), where psutil stops reading."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        entries = f.read().split(b"\0")
    return dict(e.decode(errors="replace").split("=", 1) for e in entries if b"=" in e)


def _terminate(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the daemon's process group (slurmctld has a slurmscriptd child), SIGKILL after grace."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the pytest process dies (PR_SET_PDEATHSIG)."""
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _sbin_path() -> str:
    """PATH plus the sbin directories (the daemons live in /usr/sbin, not on every user's PATH)."""
    parts = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(parts + [d for d in ("/usr/local/sbin", "/usr/sbin", "/sbin") if d not in parts])


def _tail(path: Path, lines: int, drop: str | None = None) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join([line for line in f if not drop or drop not in line][-lines:])
    except OSError as e:
        return f"({e})"


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> SlurmCluster:
    """The session's single-node SLURM cluster (see the module docstring)."""
    try:
        SlurmCluster.check_available()
    except SlurmUnavailable as e:
        if os.environ.get("CI"):
            pytest.fail(f"no SLURM cluster under CI: {e}")
        pytest.skip(str(e))
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def slurm(slurm_cluster) -> SlurmCluster:
    """The session's cluster for one test; jobs the test leaves behind are SIGKILLed after it."""
    yield slurm_cluster
    slurm_cluster.cancel_all()


if __name__ == "__main__":
    # The same cluster by hand, to try `dist-llm slurm` on this machine (as root):
    #   python -m tests.integration.slurm_cluster     then, in another shell, the printed export.
    cluster = SlurmCluster(tempfile.mkdtemp(prefix="dist-llm-slurm-")).start()
    print(
        f"SLURM is up (node {cluster.node}, {cluster.cpus} CPUs, partition debug). In another shell:\n"
        f"  export SLURM_CONF={cluster.conf_path}\n"
        "  dist-llm slurm submit configs/tiny.yaml --nproc-per-node 2 --cpus-per-task 2 --time 30\n"
        "Ctrl-C (or SIGTERM) stops the cluster and its jobs.",
        flush=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
