"""Per-rank peak host memory of real training runs, by phase — build, train, save, and load in a
resumed run — for every rank of N-rank runs of the same model, against the rank's even share of
the model's fp32 training state measured in the same run (the baseline: what a rank must hold).

This is the scale rule checked with real processes: with sharded build, training and checkpoints,
rank 0 is no different from the others and each rank stays near its share plus the process's fixed
cost (torch, data, activations, one unit of initialization, the staged copy of its shards).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

PHASES = ("build", "train", "save", "load")
STATE_BYTES_PER_PARAM = 16  # fp32 weights, fp32 gradients, AdamW's two fp32 moments


@dataclass
class MemoryResult:
    ranks: int
    params: int
    share_gb: float
    """The model's fp32 training state / ranks: what each rank must hold."""
    engine_gb: list[float]
    """Per rank, parameters + gradients + optimizer state the engine reports holding."""
    peak_gb: dict[str, list[float]] = field(default_factory=dict)
    """Phase -> per-rank peak resident memory."""
    spread: dict[str, float] = field(default_factory=dict)
    """Phase -> largest / smallest rank peak (1.0: every rank alike)."""


def torchrun_worker(nproc: int, args: list[str], cwd: str) -> None:
    """`memory_worker` on `nproc` ranks: args are its config, output directory and overrides."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "dist_llm.bench.memory_worker",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"memory benchmark run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


def read_reports(out: str, nproc: int) -> list[dict]:
    """Each rank's report (peaks by phase, the engine's byte counts) from `memory_worker`."""
    reports = []
    for rank in range(nproc):
        with open(os.path.join(out, f"rank{rank}.json"), encoding="utf-8") as f:
            reports.append(json.load(f))
    return reports


def bench_memory(
    config: str, overrides: list[str], ranks: list[int], steps: int, work_dir: str | None = None
) -> list[MemoryResult]:
    results = []
    if work_dir:
        os.makedirs(work_dir, exist_ok=True)
    for nproc in ranks:
        with tempfile.TemporaryDirectory(dir=work_dir, prefix="bench-memory-") as tmp:
            run = [
                f"logging.run_dir={tmp}/run",
                "checkpoint.interval=0",
                "train.eval_interval=0",
                "eval.tasks=[]",
                "train.eval_batches=1",
                f"launch.nproc_per_node={nproc}",
                *overrides,
            ]
            torchrun_worker(nproc, [config, f"{tmp}/first", *run, f"train.max_steps={steps}"], os.getcwd())
            torchrun_worker(
                nproc,
                [config, f"{tmp}/resumed", *run, f"train.max_steps={steps + 1}", "checkpoint.resume=auto"],
                os.getcwd(),
            )
            first, resumed = read_reports(f"{tmp}/first", nproc), read_reports(f"{tmp}/resumed", nproc)
        n = first[0]["params"]
        peaks = {
            phase: [r["peaks"].get(phase, 0) / 1e9 for r in (resumed if phase == "load" else first)]
            for phase in PHASES
        }
        results.append(
            MemoryResult(
                ranks=nproc,
                params=n,
                share_gb=n * STATE_BYTES_PER_PARAM / nproc / 1e9,
                engine_gb=[sum(r["engine"].values()) / 1e9 for r in first],
                peak_gb=peaks,
                spread={phase: max(v) / min(v) for phase, v in peaks.items() if min(v) > 0},
            )
        )
    return results


def format_table(results: list[MemoryResult]) -> str:
    lines = [
        "ranks | params | share GB (state/ranks) | engine GB per rank | "
        + " | ".join(f"{p} peak GB per rank (max/min)" for p in PHASES),
        "---|---|---|---|" + "---|" * len(PHASES),
    ]
    for r in results:
        cells = [f"{', '.join(f'{v:.2f}' for v in r.peak_gb[p])} ({r.spread.get(p, 0):.2f}x)" for p in PHASES]
        lines.append(
            f"{r.ranks} | {r.params / 1e6:.0f}M | {r.share_gb:.2f} | "
            f"{', '.join(f'{v:.2f}' for v in r.engine_gb)} | " + " | ".join(cells)
        )
    return "\n".join(lines)
