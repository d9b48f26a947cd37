"""Profiles the steps `logging.profile_steps` names (benchmark runs) into a per-phase breakdown.

Each rank profiles its own steps with torch.profiler, splits every step into data / forward /
backward / optimizer / communication / other (`metrics.breakdown`), measures its bf16 and fp32
matmul peaks, and writes the means per step to <run_dir>/breakdown/rank<r>.json for `dist-llm bench`.
Off (the default), nothing is recorded and the phase markers cost a boolean check each.
"""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING, Any

import torch
from torch.profiler import ProfilerActivity, profile

from dist_llm.callbacks.base import Callback
from dist_llm.callbacks.metrics import memory_now
from dist_llm.errors import ConfigError
from dist_llm.log import get_logger
from dist_llm.metrics.breakdown import mean_breakdown
from dist_llm.metrics.peak import measured_peaks
from dist_llm.metrics.step_profiler import steps_from_events

if TYPE_CHECKING:
    from dist_llm.trainer import Trainer

log = get_logger("profiling")


def breakdown_path(run_dir: str, rank: int) -> str:
    return os.path.join(run_dir, "breakdown", f"rank{rank}.json")


def parse_steps(spec: str) -> tuple[int, int]:
    """ "FIRST-LAST" (1-based, inclusive) -> (first, last)."""
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", spec)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ConfigError(
            f"logging.profile_steps={spec!r}: expected FIRST-LAST steps with 1 <= FIRST <= LAST, e.g. 6-20"
        )
    return int(match[1]), int(match[2])


class ProfilingCallback(Callback):
    def __init__(self) -> None:
        self.window: tuple[int, int] | None = None
        self.device = torch.device("cpu")
        self.profiler: profile | None = None
        self.peaks: dict[str, float] = {}
        self.memory: dict[str, int] = {}

    def on_train_start(self, trainer: "Trainer") -> None:
        if not trainer.cfg.logging.profile_steps:
            return
        self.window = parse_steps(trainer.cfg.logging.profile_steps)
        self.device = trainer.world.device
        self._measure_peaks(trainer)
        self._maybe_start(trainer.step)

    def _measure_peaks(self, trainer: "Trainer") -> None:
        """The peaks MFU is stated against, on this rank's device and threads: measured before and
        after the profiled steps, the best kept, since a passing load on a shared host understates
        a single measurement (seen: 0.054 then 0.15 fp32 TFLOP/s on 2 CPU cores)."""
        now = measured_peaks(self.device, trainer.cfg.train.precision)
        self.peaks = {k: max(v, self.peaks.get(k, 0.0)) for k, v in now.items()}

    def _maybe_start(self, done: int) -> None:
        """Start when the next step is the window's first (or inside it, after a resume)."""
        assert self.window is not None
        first, last = self.window
        if self.profiler is None and first - 1 <= done < last:
            self.memory = memory_now(self.device)  # before the profiler's own buffers grow
            cuda = [ProfilerActivity.CUDA] if self.device.type == "cuda" else []
            self.profiler = profile(activities=[ProfilerActivity.CPU, *cuda])
            self.profiler.start()

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        if self.window is None:
            return
        if self.profiler is not None and metrics["step"] >= self.window[1]:
            self._finish(trainer)
        else:
            self._maybe_start(metrics["step"])

    def on_train_end(self, trainer: "Trainer") -> None:
        if self.profiler is not None:  # the run stopped inside the window
            self._finish(trainer)

    def close(self, trainer: "Trainer") -> None:
        if self.profiler is not None:  # training raised: stop recording, write nothing
            self.profiler.stop()
            self.profiler = None

    def _finish(self, trainer: "Trainer") -> None:
        assert self.profiler is not None
        self.profiler.stop()
        steps = steps_from_events(self.profiler.profiler.kineto_results.events())
        self.profiler = None
        self.window = None  # one window per run
        if not steps:
            log.warning("logging.profile_steps=%s: no step was profiled", trainer.cfg.logging.profile_steps)
            return
        self._measure_peaks(trainer)
        report = {
            "rank": trainer.world.rank,
            "precision": trainer.cfg.train.precision,
            "last_step": trainer.step,
            "peak_tflops": self.peaks,
            "phases_ms": mean_breakdown(steps),
            "steps_ms": steps,
            "memory": self.memory,
        }
        path = breakdown_path(trainer.cfg.logging.run_dir, trainer.world.rank)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
        log.info(
            "step breakdown, ms per step over %d profiled steps: %s",
            len(steps),
            ", ".join(f"{k} {v:.1f}" for k, v in report["phases_ms"].items()),
        )
