"""`dist-llm bench dataloader`: how much of a training step goes into getting its batch.

For each data location (the config's, and optionally an s3:// copy) two measurements:
- the loader alone: rank 0's `next_step()` in a loop, as the trainer builds it (remote data with
  an empty cache, so the first step pays for downloads and the rest show whether prefetch keeps up);
- a real `dist-llm train` of the same config: the median `data_time_s` against the median
  `step_time_s` of the logged steps after `warmup`. Their ratio is the loader's share of a step.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from dist_llm.config import load_config
from dist_llm.data.sources import open_training_data, train_batches
from dist_llm.errors import ConfigError
from dist_llm.launch.torchrun import torchrun_command


@dataclass
class LoaderBenchResult:
    location: str
    """data.path the run read (a local directory or a URI)."""
    ranks: int
    loader_first_ms: float
    """The loader alone, first step (remote: includes the first shards' downloads)."""
    loader_ms: float
    """The loader alone, median over the steps after warmup."""
    train_data_ms: float
    """In a real training run: median data_time_s (rank 0)."""
    train_data_max_ms: float
    """In a real training run: the slowest batch after warmup."""
    train_step_ms: float
    """In a real training run: median step_time_s."""
    ratio: float
    """train_data_ms / train_step_ms: the loader's share of a step (goal: < 1%)."""


def _loader_times(config: str, overrides: list[str], steps: int) -> list[float]:
    cfg = load_config(config, overrides)
    world = cfg.launch.nproc_per_node * cfg.launch.nnodes
    cfg.validate(world_size=world)
    data = open_training_data(cfg.data)
    batches = train_batches(cfg, data, 0, cfg.engine.dims(world).dp)
    times = []
    try:
        for _ in range(steps):
            start = time.perf_counter()
            batches.next_step()
            times.append(time.perf_counter() - start)
    finally:
        data.close()
    return times


def _train_records(config: str, overrides: list[str], steps: int, run_dir: str) -> tuple[int, list[dict]]:
    cfg = load_config(config, overrides)
    ranks = cfg.launch.nproc_per_node
    args = [
        "train",
        config,
        *overrides,
        f"logging.run_dir={run_dir}",
        f"train.max_steps={steps}",
        "train.log_interval=1",
        "train.eval_interval=0",
        "eval.tasks=[]",
        "checkpoint.interval=0",
    ]
    cmd = [sys.executable, "-m", "dist_llm.cli", *args] if ranks == 1 else torchrun_command(args, ranks)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return ranks, [r for r in map(json.loads, f) if "data_time_s" in r]


def bench_dataloader(
    config: str, overrides: list[str], uris: list[str], steps: int, warmup: int
) -> list[LoaderBenchResult]:
    if warmup >= steps:
        raise ConfigError(f"--warmup {warmup} must be below --steps {steps}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, uri in enumerate([None, *uris]):
            # An empty cache per location: remote runs download what they read, as on a fresh node.
            where = [] if uri is None else [f"data.path={uri}", f"data.cache_dir={tmp}/cache{i}"]
            loader = _loader_times(config, [*overrides, *where], steps)
            if uri is not None:
                where[-1] = f"data.cache_dir={tmp}/train-cache{i}"
            ranks, records = _train_records(config, [*overrides, *where], steps, os.path.join(tmp, f"run{i}"))
            data_s = [r["data_time_s"] for r in records[warmup:]]
            step_s = statistics.median(r["step_time_s"] for r in records[warmup:])
            results.append(
                LoaderBenchResult(
                    location=uri or load_config(config, overrides).data.path,
                    ranks=ranks,
                    loader_first_ms=1e3 * loader[0],
                    loader_ms=1e3 * statistics.median(loader[warmup:]),
                    train_data_ms=1e3 * statistics.median(data_s),
                    train_data_max_ms=1e3 * max(data_s),
                    train_step_ms=1e3 * step_s,
                    ratio=statistics.median(data_s) / step_s,
                )
            )
    return results


def format_table(results: list[LoaderBenchResult]) -> str:
    lines = [
        "data | ranks | loader alone: first / median ms | in training: data ms median (max) | "
        "step ms | data / step",
        "---|---|---|---|---|---",
    ]
    for r in results:
        lines.append(
            f"{r.location} | {r.ranks} | {r.loader_first_ms:.2f} / {r.loader_ms:.3f} | "
            f"{r.train_data_ms:.3f} ({r.train_data_max_ms:.2f}) | {r.train_step_ms:.1f} | "
            f"{100 * r.ratio:.2f}%"
        )
    return "\n".join(lines)
