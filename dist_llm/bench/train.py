"""Training throughput of a config on 1 rank (the baseline) and on N ranks, measured in one run.

Each configuration runs the real `dist-llm train` in fresh processes; tokens/s is the median over
the logged steps after `warmup` steps (first steps pay for allocator and kernel warm-up).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

from dist_llm.launch.torchrun import torchrun_command


@dataclass
class TrainBenchResult:
    ranks: int
    tokens_per_s: float
    threads_per_rank: int
    tokens_per_s_per_thread: float
    step_time_s: float
    mfu: float
    peak_tflops: float


def _run(config: str, overrides: list[str], ranks: int, steps: int, run_dir: str) -> list[dict]:
    args = ["train", config, f"logging.run_dir={run_dir}", f"train.max_steps={steps}",
            "train.log_interval=1", "train.eval_interval=0", "checkpoint.interval=0",
            f"launch.nproc_per_node={ranks}", *overrides]
    cmd = ([sys.executable, "-m", "dist_llm.cli", *args] if ranks == 1
           else torchrun_command(args, nproc_per_node=ranks))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "tokens_per_s" in r]


def bench_train(config: str, overrides: list[str], ranks: list[int], steps: int,
                warmup: int) -> list[TrainBenchResult]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in ranks:
            records = _run(config, overrides, n, steps, os.path.join(tmp, f"r{n}"))[warmup:]
            tps = statistics.median(r["tokens_per_s"] for r in records)
            results.append(TrainBenchResult(
                ranks=n, tokens_per_s=tps, threads_per_rank=records[0]["threads_per_rank"],
                tokens_per_s_per_thread=tps / (n * records[0]["threads_per_rank"]),
                step_time_s=statistics.median(r["step_time_s"] for r in records),
                mfu=statistics.median(r["mfu"] for r in records), peak_tflops=records[0]["peak_tflops"]))
    return results


def format_table(results: list[TrainBenchResult]) -> str:
    base = results[0]
    lines = ["ranks x threads | tokens/s | tokens/s/thread | step s | MFU (peak/rank) | "
             "vs 1st row: total, per thread", "---|---|---|---|---|---"]
    for r in results:
        lines.append(f"{r.ranks} x {r.threads_per_rank} | {r.tokens_per_s:,.0f} | "
                     f"{r.tokens_per_s_per_thread:,.0f} | "
                     f"{r.step_time_s:.3f} | {100 * r.mfu:.1f}% ({r.peak_tflops:.2f} TF) | "
                     f"{r.tokens_per_s / base.tokens_per_s:.2f}x, "
                     f"{r.tokens_per_s_per_thread / base.tokens_per_s_per_thread:.2f}x")
    return "\n".join(lines)


def to_json(results: list[TrainBenchResult]) -> str:
    return json.dumps([asdict(r) for r in results], indent=1)
