"""The parts of hang and straggler detection that need no second process: the hang report, the
heartbeat store, process states, the timeout sized from step times, and the straggler arithmetic.
The real thing (a stopped, a killed and a slowed rank under torchrun) is tests/distributed/test_hangs.py."""

from __future__ import annotations

import math
import signal
import subprocess
import time

import torch.distributed as dist

from dist_llm.callbacks import watchdog
from dist_llm.callbacks.watchdog import HangWatchdog, hang_report, ranges
from dist_llm.distributed.heartbeat import GONE, RUNNING, STOPPED, Beat, HeartbeatStore, process_state
from dist_llm.metrics.rank_timing import FIELDS, RankTimes


def beat(rank: int, seq: int, step: int = 7, phase: str = "backward", host: str = "node-a") -> Beat:
    return Beat(rank, host, 1000 + rank, step, phase, seq)


def test_hang_report_names_stopped_dead_and_waiting_ranks():
    before = {0: beat(0, 5), 1: beat(1, 5), 2: beat(2, 5, host="node-b"), 3: beat(3, 5), 4: beat(4, 5)}
    after = {
        0: beat(0, 9),
        1: beat(1, 5, phase="forward"),  # stopped beating, on this host
        2: beat(2, 5, host="node-b"),  # stopped beating, elsewhere
        3: beat(3, 5),  # its process is gone
        4: beat(4, 9, step=6, phase="optimizer"),
    }
    lines = hang_report(6, before, after, {1: STOPPED, 3: GONE})
    assert lines == [
        "heartbeat stopped: rank 1 on node-a (pid 1001, process stopped (SIGSTOP or a debugger)), "
        "last beat at forward after step 7",
        "heartbeat stopped: rank 2 on node-b (pid 1002, on another host: hung, or dead with its host), "
        "last beat at backward after step 7",
        "dead: rank 3 on node-a (pid 1003, process gone), last beat at backward after step 7",
        "rank 5: no heartbeat at all (never started, or its store client failed)",
        "alive at backward after step 7: rank(s) 0",
        "alive at optimizer after step 6: rank(s) 4",
    ]
    beating = hang_report(3, {r: beat(r, 2) for r in range(3)}, {r: beat(r, 3) for r in range(3)}, {})
    assert beating[0].startswith("no heartbeat stopped")
    assert ranges([5, 0, 1, 2, 7, 8]) == "0-2, 5, 7-8"


def test_heartbeat_store_and_process_states():
    store = HeartbeatStore(dist.HashStore(), "this process")
    store.publish(beat(0, 1))
    store.publish(beat(0, 2))
    assert store.read([0, 1]) == {0: beat(0, 2)}  # rank 1 never beat: left out, not waited for
    assert store.hang_flagged_by() is None
    store.flag_hang(3)
    store.flag_hang(1)
    assert store.hang_flagged_by() == 3  # the first to time out
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert process_state(child.pid) == RUNNING
        child.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while process_state(child.pid) != STOPPED and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process_state(child.pid) == STOPPED
        child.kill()
        deadline = time.monotonic() + 10
        while process_state(child.pid) != GONE and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process_state(child.pid) == GONE  # a zombie until reaped: gone already
    finally:
        child.kill()
        child.wait()
    assert process_state(child.pid) == GONE


def test_timeout_is_sized_from_the_slowest_recent_step(monkeypatch):
    clock = iter([0.0, 1.0, 41.0, 42.0])
    monkeypatch.setattr(watchdog.time, "perf_counter", lambda: next(clock))
    wd = HangWatchdog()
    wd.auto, wd.timeout_s = True, watchdog.STARTUP_S

    class Trainer:
        step = 0

    timeouts = []
    for _ in range(4):
        Trainer.step += 1
        wd.on_step_end(Trainer, {})
        timeouts.append(wd.timeout_s)
    # After the first step the floor; then 10x the slowest step seen (40 s), which a faster one keeps.
    assert timeouts == [watchdog.FLOOR_S, watchdog.FLOOR_S, 400.0, 400.0]
    assert wd.step == 4


def row(step: float, comm: float, forward: float = 10.0, stage: int = 0) -> list[float]:
    values = {"step": step, "data": 1, "forward": forward, "backward": 20, "optimizer": 2, "comm_ops": comm}
    return [*(values.get(f, math.nan) for f in FIELDS), stage]


def test_the_rank_the_others_wait_for_is_the_straggler():
    # Every step takes 100 ms on every rank; rank 2 spends 10 ms in collectives, the others 50-52:
    # they waited ~40 ms a step for it. Rank 4's own profiler was busy: it sent no row.
    table = [row(100, 50), row(100, 52), row(100, 10, forward=60), row(100, 51), row(math.nan, math.nan)]
    times = RankTimes(table, ["a", "a", "b", "b", "c"], threshold=0.2)
    assert times.ranks == [0, 1, 2, 3]
    assert times.wait == {0: 40, 1: 42, 2: 0, 3: 41}
    assert times.median_busy == 59.5
    [straggler] = times.stragglers()
    assert (straggler.rank, straggler.host) == (2, "b") and math.isclose(straggler.excess, 100 / 59.5 - 1)
    record = times.record(step=50, sampled=5)
    assert record["stragglers"] == "rank 2 on b (+68%)" and record["straggler_count"] == 1
    assert record["ranks_slowest"] == 2 and record["rank2_busy_ms"] == 100 and record["rank0_wait_ms"] == 40
    assert record["rank2_forward_ms"] == 60 and record["rank2_comm_ms"] == 10
    assert "rank4_busy_ms" not in record and "rank0_forward_backward_ms" not in record  # no NaN keys
    # Flat keys, numbers only (but the stragglers' names), so every sink takes the record as it is.
    assert all(isinstance(v, (int, float)) for k, v in record.items() if k != "stragglers")
    assert "rank 2 on b: +68% (busy 100.0/59.5" in times.describe(straggler)
    # Pipeline stages do different work: each rank is compared within its own stage only.
    stages = [row(100, 50, stage=0), row(100, 48, stage=0), row(100, 10, stage=1), row(100, 12, stage=1)]
    even = RankTimes(stages, ["a"] * 4, threshold=0.2)
    assert even.wait == {0: 2, 1: 0, 2: 0, 3: 2} and even.stragglers() == []
    record = even.record(5, 5)
    assert record["stragglers"] == "" and math.isclose(record["rank2_excess"], 100 / 99 - 1)
