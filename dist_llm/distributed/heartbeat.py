"""Heartbeats through a side channel no collective can block: the launcher's key-value store.

torchrun (and any env:// launch, SLURM's included) gives every rank MASTER_ADDR/MASTER_PORT, the
TCPStore the process group was set up through. Each rank opens a client connection of its own to
it, so a rank stuck in a collective, or in a store call of the process group, does not hold up the
heartbeats. Where the store lives: in torchrun's agent by default (it outlives every worker), or in
rank 0's process (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, as our SLURM script sets, or a plain env://
launch); then a frozen rank 0 makes the store unreachable, which the watchdog reports as such.
Keys are per torchrun attempt, so a restarted job never reads the beats of the one before.

Whether a rank's process still exists can only be seen from its own host: `process_state`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import timedelta

import torch.distributed as dist

RUNNING, STOPPED, GONE = "running", "stopped", "gone"
STATE_WORDS = {
    RUNNING: "process running",
    STOPPED: "process stopped (SIGSTOP or a debugger)",
    GONE: "process gone",
}


@dataclass(frozen=True)
class Beat:
    rank: int
    host: str
    pid: int
    step: int
    """Steps completed."""
    phase: str
    """Short phase name ("forward", ...); empty between phases."""
    seq: int
    """Counts the beats: it stops moving when the process stops running Python."""
    state: str = "training"
    """training; finished (left the loop normally); failed (left it with an error)."""

    def where(self) -> str:
        return f"{self.phase or 'no phase (callbacks)'} after step {self.step}"


class HeartbeatStore:
    def __init__(self, store: dist.Store, where: str) -> None:
        self.store = store
        self.where = where
        """Where the store is, for messages."""

    @classmethod
    def connect(cls, world_size: int, timeout_s: float) -> "HeartbeatStore":
        """A client of the launcher's store; for a single process (or without MASTER_ADDR), a
        store in this process (the watchdog then knows only about this rank)."""
        addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
        if world_size == 1 or not addr or not port:
            return cls(dist.HashStore(), "this process")
        client = dist.TCPStore(
            addr, int(port), is_master=False, timeout=timedelta(seconds=timeout_s), wait_for_workers=False
        )
        env = os.environ
        attempt = (env.get("TORCHELASTIC_RUN_ID", ""), env.get("TORCHELASTIC_RESTART_COUNT", "0"))
        prefix = "dist_llm/heartbeat/" + "/".join(attempt)
        owner = "torchrun's agent" if env.get("TORCHELASTIC_USE_AGENT_STORE") == "True" else "rank 0"
        return cls(dist.PrefixStore(prefix, client), f"{addr}:{port}, in {owner}")

    def publish(self, beat: Beat) -> None:
        self.store.set(f"beat/{beat.rank}", json.dumps(asdict(beat)))

    def read(self, ranks: list[int]) -> dict[int, Beat]:
        """The latest beat of each rank that has published one."""
        keys = [f"beat/{r}" for r in ranks]
        if not keys:
            return {}
        if self.store.check(keys):  # the usual case, one round trip; a missing key would block
            values = self.store.multi_get(keys)
        else:
            present = [(r, k) for r, k in zip(ranks, keys) if self.store.check([k])]
            ranks, values = [r for r, _ in present], [self.store.get(k) for _, k in present]
        return {r: Beat(**json.loads(v)) for r, v in zip(ranks, values)}

    def flag_hang(self, rank: int) -> None:
        """Tell every rank that one has timed out, so that all of them dump their stacks."""
        self.store.compare_set("hang", "", str(rank))

    def hang_flagged_by(self) -> int | None:
        """The rank that flagged a hang first, if any did."""
        return int(self.store.get("hang")) if self.store.check(["hang"]) else None


def process_state(pid: int) -> str:
    """RUNNING, STOPPED or GONE (exited, killed, or a zombie its parent has not reaped yet) for a
    process on this host."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            # "pid (comm) S ...": the state follows the command name, which may contain spaces.
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return GONE
    except OSError:  # no /proc (not Linux): only existence can be told
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return GONE
        return RUNNING
    if state in ("Z", "X"):
        return GONE
    return STOPPED if state in ("T", "t") else RUNNING
