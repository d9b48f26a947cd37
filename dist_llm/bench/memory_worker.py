"""One rank of `dist-llm bench memory` (run under torchrun): a real Trainer, with this process's
resident memory sampled every few milliseconds and attributed to the phase it is in: build (meta
device, parallelize, materialize the shards), load (resume from a sharded checkpoint), train, save.
Writes <out>/rank<r>.json with each phase's peak and the engine's own byte counts."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

from dist_llm.callbacks.base import Callback
from dist_llm.config import load_config
from dist_llm.distributed import init_distributed, shutdown
from dist_llm.models import count_params
from dist_llm.trainer import Trainer

PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PhaseSampler:
    """Peak resident bytes per phase, from a background thread (a phase's peak can be brief)."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.phase = "start"
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), daemon=True)
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(interval_s)

    def sample(self) -> None:
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), resident_bytes())

    def enter(self, phase: str) -> None:
        self.sample()  # the end of the previous phase
        self.phase = phase
        self.sample()

    def stop(self) -> dict[str, int]:
        self.sample()
        self._stop.set()
        self._thread.join()
        return self.peaks


class PhaseMarks(Callback):
    """Added last, so its on_train_end runs first (teardown is in reverse): the final save follows."""

    def __init__(self, sampler: PhaseSampler) -> None:
        self.sampler = sampler

    def on_train_start(self, trainer: Trainer) -> None:
        self.sampler.enter("train")

    def on_train_end(self, trainer: Trainer) -> None:
        self.sampler.enter("save")


def main(argv: list[str]) -> int:
    config, out, *overrides = argv
    cfg = load_config(config, overrides)
    world = init_distributed(cfg.engine.backend)
    sampler = PhaseSampler()
    sampler.enter("build")
    trainer = Trainer(cfg, world, callbacks=[PhaseMarks(sampler)])
    sampler.enter("load" if cfg.checkpoint.resume != "none" else "train")
    trainer.fit()
    peaks = sampler.stop()
    report: dict[str, Any] = {
        "rank": world.rank,
        "world": world.size,
        "peaks": peaks,
        "engine": trainer.engine.memory_report(),
        "params": count_params(trainer.cfg.model),  # vocabulary filled from the dataset by now
        "step": trainer.step,
    }
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"rank{world.rank}.json"), "w", encoding="utf-8") as f:
        json.dump(report, f)
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
