"""Hang watchdog: a thread on every rank that publishes a heartbeat (step and phase) through the
launcher's store (`distributed.heartbeat`) and notices when its own training loop stops moving.

Progress is the loop leaving a phase (`metrics.phases.NOW`: data, forward, backward, optimizer,
an eval batch, a checkpoint save), read from the thread without touching the device. A rank that
makes no progress for `train.hang_timeout_s` is hung: it flags the hang in the store (so every rank
still running dumps its stacks, not only the first to time out), writes its Python stacks
(faulthandler) to <run_dir>/hang/, names the ranks whose heartbeat stopped, with host and phase,
and exits with EXIT_HUNG; torchrun --max-restarts (or a requeue) then restarts the job from the
last committed checkpoint. A rank on this host whose process is gone is reported as dead at once,
not as hung.

The timeout: a fixed `train.hang_timeout_s`, or by default max(FLOOR_S, STEP_FACTOR x the slowest
of the last RECENT_STEPS steps), STARTUP_S until this process's first step is done (compilation,
communicator set-up and the first evaluation come before it).
"""

from __future__ import annotations

import faulthandler
import logging
import os
import socket
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from dist_llm.callbacks.base import Callback
from dist_llm.distributed.heartbeat import GONE, STATE_WORDS, Beat, HeartbeatStore, process_state
from dist_llm.log import get_logger
from dist_llm.metrics.phases import NOW, short

if TYPE_CHECKING:
    from dist_llm.trainer import Trainer

log = get_logger("watchdog")

EXIT_HUNG = 124
"""Exit status of a rank that timed out (what `timeout(1)` uses)."""
FLOOR_S = 300.0
STEP_FACTOR = 10.0
RECENT_STEPS = 100
STARTUP_S = 1800.0
STORE_TIMEOUT_S = 10.0
"""How long one store call may block (a store in a frozen rank 0 answers nothing)."""
EXITS = {"failed": "training raised an error", "hung": "it timed out as hung"}
"""How a rank that published its exit left, for peers that see its process gone."""


def beat_period(timeout_s: float) -> float:
    """Heartbeat and check interval: a twentieth of the timeout, within [0.5 s, 10 s], so 512 ranks
    send the store at most ~1,000 small writes a second."""
    return min(max(timeout_s / 20, 0.5), 10.0)


def ranges(ranks: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    out: list[str] = []
    for r in sorted(ranks):
        if out and out[-1].split("-")[-1] == str(r - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{r}"
        else:
            out.append(str(r))
    return ", ".join(out)


def hang_report(
    world_size: int, before: dict[int, Beat], after: dict[int, Beat], states: dict[int, str]
) -> list[str]:
    """Who stopped and where everyone else is, from two reads of the heartbeats half a timeout
    apart; `states` has the process state of the ranks on this host."""
    lines: list[str] = []
    alive: dict[str, list[int]] = {}
    for r in range(world_size):
        beat = after.get(r)
        if beat is None:
            lines.append(f"rank {r}: no heartbeat at all (never started, or its store client failed)")
        elif r in before and before[r].seq == beat.seq:
            state = STATE_WORDS[states[r]] if r in states else "on another host: hung, or dead with its host"
            verdict = "dead" if states.get(r) == GONE else "heartbeat stopped"
            lines.append(
                f"{verdict}: rank {r} on {beat.host} (pid {beat.pid}, {state}), last beat at {beat.where()}"
            )
        else:
            alive.setdefault(beat.where(), []).append(r)
    if not lines:
        lines.append("no heartbeat stopped: every rank runs, none progresses (a collective not all entered?)")
    for where, ranks in sorted(alive.items(), key=lambda kv: len(kv[1])):
        lines.append(f"alive at {where}: rank(s) {ranges(ranks)}")
    return lines


class HangWatchdog(Callback):
    def __init__(self) -> None:
        self.timeout_s = 0.0
        """0: off. Written by the loop, read by the thread (a float: no lock needed)."""
        self.auto = False
        self.recent: deque[float] = deque(maxlen=RECENT_STEPS)
        self.last_step_end: float | None = None
        self.step = 0
        self.store: HeartbeatStore | None = None
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()
        self.seq = 0
        self.rank, self.world_size, self.host, self.run_dir = 0, 1, socket.gethostname(), "."
        self.peers: dict[int, int] = {}
        """Ranks on this host -> pid, from their first beats."""
        self.reported: set[int] = set()

    # ---- the loop's side: cheap, no device access ------------------------------------------------

    def on_train_start(self, trainer: "Trainer") -> None:
        configured = trainer.cfg.train.hang_timeout_s
        if configured == 0:
            return
        self.auto = configured is None
        self.timeout_s = STARTUP_S if self.auto else float(configured)
        self.step = trainer.step
        self.rank, self.world_size = trainer.world.rank, trainer.world.size
        self.run_dir = trainer.cfg.logging.run_dir
        self.store = HeartbeatStore.connect(self.world_size, STORE_TIMEOUT_S)
        self._publish()
        self.thread = threading.Thread(target=self._watch, name="dist_llm-watchdog", daemon=True)
        self.thread.start()
        log.info(
            "hang watchdog: heartbeats through the store at %s, timeout %s",
            self.store.where,
            "sized from step times" if self.auto else f"{self.timeout_s:g} s",
        )

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        self.step = trainer.step
        if not self.auto:
            return
        now = time.perf_counter()
        if self.last_step_end is not None:
            self.recent.append(now - self.last_step_end)
        self.timeout_s = max(FLOOR_S, STEP_FACTOR * max(self.recent, default=0.0))
        self.last_step_end = now

    def on_train_end(self, trainer: "Trainer") -> None:
        self._stop("finished")

    def close(self, trainer: "Trainer") -> None:
        # Still running here means training raised; a peer on this host that died is the likely
        # cause, so `_stop` looks for one before saying this rank failed.
        self._stop("failed")

    def _stop(self, state: str) -> None:
        if self.thread is None:
            return
        self.stopping.set()
        self.thread.join(timeout=2 * beat_period(self.timeout_s))
        if not self.thread.is_alive():  # else it is inside a store call: leave the store to it
            if state == "failed":
                self._check_peers()
            self._publish(state)
        self.thread = None

    # ---- the watchdog thread ---------------------------------------------------------------------

    def _publish(self, state: str = "training") -> None:
        assert self.store is not None
        self.seq += 1
        beat = Beat(self.rank, self.host, os.getpid(), self.step, short(NOW.phase), self.seq, state)
        try:
            self.store.publish(beat)
        except (RuntimeError, OSError) as e:  # a timeout or a lost connection: keep watching
            log.warning("heartbeat store at %s unreachable: %s", self.store.where, e)

    def _read(self, ranks: list[int]) -> dict[int, Beat]:
        assert self.store is not None
        try:
            return self.store.read(ranks)
        except (RuntimeError, OSError) as e:
            log.warning("could not read heartbeats from the store at %s: %s", self.store.where, e)
            return {}

    def _local_ranks(self) -> list[int]:
        """Ranks on this host: torchrun numbers each node's ranks contiguously."""
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        first = self.rank - local_rank
        return [r for r in range(first, first + local_size) if r != self.rank]

    def _check_peers(self) -> None:
        """Report once each rank on this host whose process is gone: dead, not hung."""
        missing = [r for r in self._local_ranks() if r not in self.peers]
        for r, beat in self._read(missing).items():
            if beat.host == self.host:
                self.peers[r] = beat.pid
        for r, pid in self.peers.items():
            if r in self.reported or process_state(pid) != GONE:
                continue
            self.reported.add(r)
            last = self._read([r]).get(r)
            if last is None:
                log.error(
                    "rank %d on %s (pid %d): process gone; its last heartbeat is unreadable",
                    r,
                    self.host,
                    pid,
                )
            elif last.state in EXITS:
                log.error("rank %d on %s (pid %d) exited: %s", r, self.host, pid, EXITS[last.state])
            else:
                log.error(
                    "rank %d on %s (pid %d) is dead: its process is gone while training (killed: SIGKILL, "
                    "the OOM killer, a crash), last beat at %s",
                    r,
                    self.host,
                    pid,
                    last.where(),
                )

    def _watch(self) -> None:
        last_exits, progress_at = NOW.exits, time.monotonic()
        before: dict[int, Beat] | None = None
        everyone = list(range(self.world_size))
        while not self.stopping.wait(beat_period(self.timeout_s)):
            if NOW.exits != last_exits:
                last_exits, progress_at, before = NOW.exits, time.monotonic(), None
            self._publish()
            self._check_peers()
            stalled, timeout = time.monotonic() - progress_at, self.timeout_s
            if stalled < timeout / 2:
                continue
            if before is None:  # the first read; the second, half a timeout later, shows who stopped
                before = self._read(everyone)
                continue
            flagged = self._flagged_by()
            if stalled >= timeout or flagged is not None:
                self._hung(stalled, before, flagged)

    def _flagged_by(self) -> int | None:
        assert self.store is not None
        try:
            return self.store.hang_flagged_by()
        except (RuntimeError, OSError):
            return None

    def _hung(self, stalled: float, before: dict[int, Beat], flagged: int | None) -> None:
        """Dump stacks, report, exit. Never returns."""
        assert self.store is not None
        if flagged is None:
            try:
                self.store.flag_hang(self.rank)
            except (RuntimeError, OSError):
                pass  # the store is down: every rank times out on its own
        path = self._dump_stacks()
        self._publish("hung")
        log.error(
            "rank %d on %s hung: no progress for %.0f s (timeout %.0f s), in %s after step %d%s; "
            "Python stacks in %s",
            self.rank,
            self.host,
            stalled,
            self.timeout_s,
            short(NOW.phase) or "no phase (callbacks)",
            self.step,
            f"; rank {flagged} timed out first" if flagged not in (None, self.rank) else "",
            path,
        )
        after = self._read(list(range(self.world_size)))
        alive = [r for r, b in after.items() if r not in before or before[r].seq != b.seq]
        if not alive or min(alive) == self.rank:  # one report, from the lowest rank still beating
            if after:
                states = {r: process_state(pid) for r, pid in self.peers.items()}
                lines = hang_report(self.world_size, before, after, states)
            else:
                lines = [f"the heartbeat store at {self.store.where} does not answer"]
                if self.store.where.endswith("in rank 0"):
                    lines.append("it runs in rank 0's process: rank 0 is likely the rank that stopped")
            log.error(
                "hang: %s. Exiting with %d so that torchrun --max-restarts or the scheduler restarts "
                "the job from its last committed checkpoint",
                "; ".join(lines),
                EXIT_HUNG,
            )
        # Peers see the flag within a beat: give them time to dump their stacks before this rank's
        # exit breaks their collectives.
        time.sleep(min(2 * beat_period(self.timeout_s), 10.0))
        logging.shutdown()
        os._exit(EXIT_HUNG)

    def _dump_stacks(self) -> str:
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        path = os.path.join(self.run_dir, "hang", f"stacks-rank{self.rank:05d}-attempt{restart}.txt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"rank {self.rank} on {self.host}, pid {os.getpid()}, step {self.step}\n")
            f.flush()
            faulthandler.dump_traceback(file=f, all_threads=True)
        return path
