"""Training throughput (and per-rank memory) of several variants of one config, measured in one
run; the first variant is the baseline every ratio is against.

Each variant runs the real `dist-llm train` in fresh processes; tokens/s is the median over the
logged steps after `warmup` steps (first steps pay for allocator and kernel warm-up).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from dist_llm.errors import ConfigError
from dist_llm.launch.torchrun import torchrun_command

MEMORY_KEYS = ("param_bytes", "grad_bytes", "optimizer_bytes")


@dataclass
class Variant:
    name: str
    ranks: int
    overrides: list[str]


@dataclass
class TrainBenchResult:
    name: str
    ranks: int
    threads_per_rank: int
    tokens_per_s: float
    tokens_per_s_per_thread: float
    step_time_s: float
    mfu: float
    peak_tflops: float
    memory: dict[str, int]
    """Rank 0's bytes of parameters / gradients / optimizer state after the first step."""


def _run(config: str, overrides: list[str], ranks: int, steps: int, run_dir: str) -> list[dict]:
    args = ["train", config, f"logging.run_dir={run_dir}", f"train.max_steps={steps}",
            "train.log_interval=1", "train.eval_interval=0", "checkpoint.interval=0",
            f"launch.nproc_per_node={ranks}", *overrides]
    cmd = ([sys.executable, "-m", "dist_llm.cli", *args] if ranks == 1
           else torchrun_command(args, nproc_per_node=ranks))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "tokens_per_s" in r]


def bench_variants(config: str, overrides: list[str], variants: list[Variant], steps: int,
                   warmup: int) -> list[TrainBenchResult]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, v in enumerate(variants):
            all_records = _run(config, [*overrides, *v.overrides], v.ranks, steps, os.path.join(tmp, str(i)))
            records = all_records[warmup:]
            threads = records[0]["threads_per_rank"]
            tps = statistics.median(r["tokens_per_s"] for r in records)
            results.append(TrainBenchResult(
                name=v.name, ranks=v.ranks, threads_per_rank=threads, tokens_per_s=tps,
                tokens_per_s_per_thread=tps / (v.ranks * threads),
                step_time_s=statistics.median(r["step_time_s"] for r in records),
                mfu=statistics.median(r["mfu"] for r in records), peak_tflops=records[0]["peak_tflops"],
                memory={k: all_records[0][k] for k in MEMORY_KEYS if k in all_records[0]}))
    return results


ENGINE_OVERRIDES = {
    "ddp": [],
    "zero1": ["engine.type=deepspeed", "engine.zero_stage=1"],
    "zero2": ["engine.type=deepspeed", "engine.zero_stage=2"],
    "zero3": ["engine.type=deepspeed", "engine.zero_stage=3"],
    "zero3-offload": ["engine.type=deepspeed", "engine.zero_stage=3", "engine.offload_optimizer=cpu",
                      "engine.offload_params=cpu"],
    "tp2": ["engine.tp=2"],
    "pp2": ["engine.pp=2"],
}


def engine_variants(names: list[str], ranks: int) -> list[Variant]:
    unknown = [n for n in names if n not in ENGINE_OVERRIDES]
    if unknown:
        raise ConfigError(f"--engines: unknown {unknown}; choose from {list(ENGINE_OVERRIDES)}")
    return [Variant(name=n, ranks=ranks, overrides=ENGINE_OVERRIDES[n]) for n in names]


def rank_variants(ranks: list[int]) -> list[Variant]:
    return [Variant(name=f"{n} rank{'s' if n > 1 else ''}", ranks=n, overrides=[]) for n in ranks]


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f}"


def format_table(results: list[TrainBenchResult]) -> str:
    base = results[0]
    lines = ["variant | ranks x threads | tokens/s | tokens/s/thread | step s | MFU (peak/rank) | "
             "params/grads/optim MiB per rank | vs 1st row: total, per thread",
             "---|---|---|---|---|---|---|---"]
    for r in results:
        memory = "/".join(_mib(r.memory.get(k)) for k in MEMORY_KEYS)
        lines.append(f"{r.name} | {r.ranks} x {r.threads_per_rank} | {r.tokens_per_s:,.0f} | "
                     f"{r.tokens_per_s_per_thread:,.0f} | {r.step_time_s:.3f} | "
                     f"{100 * r.mfu:.1f}% ({r.peak_tflops:.2f} TF) | {memory} | "
                     f"{r.tokens_per_s / base.tokens_per_s:.2f}x, "
                     f"{r.tokens_per_s_per_thread / base.tokens_per_s_per_thread:.2f}x")
    return "\n".join(lines)

