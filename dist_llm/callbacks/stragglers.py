"""Every `train.straggler_interval` steps: time the last few steps on every rank, gather the times,
and name the ranks that hold the others back (`metrics.rank_timing`).

Each rank records its last `SAMPLED_STEPS` steps of the interval with the light profiler (phase
markers and collectives only; `metrics.step_profiler`), so the steps in between run untouched. At
the interval's last step one all-gather carries a few floats per rank; rank 0 logs the stragglers
with their hosts and emits the record to every sink. The sampled steps are the same on every rank
(a function of the step number), so all ranks reach the gather together, after a resume too.
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any

import torch

from dist_llm.callbacks.base import Callback
from dist_llm.callbacks.profiling import parse_steps
from dist_llm.distributed import all_gather_object, all_gather_rows
from dist_llm.log import get_logger
from dist_llm.metrics.rank_timing import RankTimes, rank_row
from dist_llm.metrics.step_profiler import LightProfiler

if TYPE_CHECKING:
    from dist_llm.trainer import Trainer

log = get_logger("stragglers")

SAMPLED_STEPS = 5
"""Steps timed per interval: enough to average out one slow step, few enough to stay cheap."""


class StragglerCallback(Callback):
    def __init__(self) -> None:
        self.interval = 0
        self.profiler: LightProfiler | None = None
        self.bench_window: tuple[int, int] | None = None
        self.hosts: list[str] | None = None
        self.cost_s = 0.0
        """Time spent starting the profiler for the check in progress."""

    def on_train_start(self, trainer: "Trainer") -> None:
        self.interval = trainer.cfg.train.straggler_interval
        if not self.interval:
            return
        # Kineto prints two lines per start and stop on every rank (level 6 silences it, its errors
        # too: set KINETO_LOG_LEVEL to see them); it reads this on first use.
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")
        self.profiler = LightProfiler(trainer.world.device)
        if trainer.cfg.logging.profile_steps:
            self.bench_window = parse_steps(trainer.cfg.logging.profile_steps)
        self._maybe_start(trainer.step, trainer.stop_step)

    def _window(self, sample_step: int) -> range:
        return range(max(sample_step - SAMPLED_STEPS + 1, 1), sample_step + 1)

    def _sampled(self, sample_step: int) -> bool:
        """Whether the interval ending at `sample_step` is sampled: not where `dist-llm bench`
        profiles (one profiler at a time); the same answer on every rank."""
        if self.bench_window is None:
            return True
        first, last = self.bench_window
        window = self._window(sample_step)
        return window.stop <= first or window.start > last

    def _maybe_start(self, done: int, stop_step: int) -> None:
        """Start recording when the next step is in a sampled window (and not past the run's end)."""
        assert self.profiler is not None
        step = done + 1
        sample_step = step + (-step) % self.interval
        if (
            self.profiler.running
            or step not in self._window(sample_step)
            or sample_step > stop_step
            or not self._sampled(sample_step)
            or torch.autograd._profiler_enabled()  # someone else's profiler: this rank sends no row
        ):
            return
        start = time.perf_counter()
        self.profiler.start()
        self.cost_s += time.perf_counter() - start

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        if not self.interval:
            return
        assert self.profiler is not None
        if trainer.step % self.interval == 0 and self._sampled(trainer.step):
            start = time.perf_counter()
            steps = self.profiler.stop() if self.profiler.running else []
            self._gather(trainer, steps, start)
        self._maybe_start(trainer.step, trainer.stop_step)

    def _gather(self, trainer: "Trainer", steps: list[dict[str, float]], start: float) -> None:
        row = torch.tensor(
            rank_row(steps, trainer.dims.pp_rank), dtype=torch.float64, device=trainer.world.device
        )
        table = all_gather_rows(row).tolist()
        if self.hosts is None:  # once: a rank's host does not change within a run
            self.hosts = [str(h) for h in all_gather_object(socket.gethostname())]
        # What this check cost outside the recorded steps (profiler start and stop, the gather); the
        # recorded steps' own extra time shows in their step_time_s.
        cost_ms, self.cost_s = 1000 * (self.cost_s + time.perf_counter() - start), 0.0
        if not trainer.world.is_main:
            return
        times = RankTimes(table, self.hosts, trainer.cfg.train.straggler_threshold)
        record = times.record(trainer.step, len(steps))
        record["ranks_check_ms"] = cost_ms
        window = self._window(trainer.step)
        stragglers = times.stragglers()
        if stragglers:
            log.warning(
                "straggler(s) over steps %d-%d (own work per step, step less waiting for others, "
                "more than %.0f%% above the median rank): %s",
                window.start,
                window.stop - 1,
                100 * times.threshold,
                "; ".join(times.describe(s) for s in stragglers),
            )
        elif "ranks_slowest" in record:
            log.info(
                "rank timings over steps %d-%d: median own work %.1f ms per step, slowest rank %d "
                "(+%.0f%%); no straggler",
                window.start,
                window.stop - 1,
                times.median_busy,
                record["ranks_slowest"],
                100 * record["ranks_slowest_excess"],
            )
        trainer.emit(record)

    def on_train_end(self, trainer: "Trainer") -> None:
        self.close(trainer)

    def close(self, trainer: "Trainer") -> None:
        if self.profiler is not None and self.profiler.running:  # a window the run did not finish
            self.profiler.stop()
