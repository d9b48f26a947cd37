"""Training throughput, step-time breakdown and per-rank memory of several variants of one config,
measured in one run; the first variant is the baseline every ratio is against.

Each variant runs the real `dist-llm train` in fresh processes; tokens/s is the median over the
logged steps after `warmup` steps (first steps pay for allocator and kernel warm-up). Then
PROFILED_STEPS more steps are profiled (`logging.profile_steps`) into data / forward / backward /
optimizer / communication / other: after the timed steps, because the profiler's per-op cost
(measured on CPU: +2% of a `tiny` step's CPU time, +15% of a 0.1 s step) would otherwise be in
tokens/s. Every rank measures its bf16 and fp32 matmul peaks; MFU is stated against the measured
peak of the precision the run used.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from dist_llm.callbacks.profiling import breakdown_path
from dist_llm.errors import ConfigError
from dist_llm.launch.torchrun import torchrun_command

MEMORY_KEYS = ("param_bytes", "grad_bytes", "optimizer_bytes")
PROFILED_STEPS = 10


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
    profiled_step_time_s: float
    """Median step time of the profiled steps: against step_time_s, what profiling costs."""
    precision: str
    """The run's resolved train.precision: its peak is the MFU denominator."""
    achieved_tflops: float
    """Model FLOP/s per rank (FLOPs/token x tokens/s / ranks), median over the steps."""
    mfu: float
    """achieved_tflops / rank 0's measured peak for `precision`."""
    peak_tflops: dict[str, float]
    """Rank 0's measured matmul TFLOP/s per precision (bf16, fp32), on its device and threads."""
    memory: dict[str, int]
    """Rank 0's bytes of parameters / gradients / optimizer state after the first step."""
    rank_memory: list[dict[str, int]]
    """Each rank's host RSS (and CUDA allocator peak) after the timed steps."""
    breakdown_ms: dict[str, float]
    """Rank 0's mean ms per profiled step: step, data, forward, backward (or forward_backward for a
    pipeline), optimizer, comm (all collectives), comm_in_<phase>, comm_exposed, other."""
    rank_breakdowns: list[dict]
    """Every rank's breakdown file, per-step times included."""


def _run(config: str, overrides: list[str], ranks: int, steps: int, run_dir: str) -> list[dict]:
    args = [
        "train",
        config,
        f"logging.run_dir={run_dir}",
        f"train.max_steps={steps}",
        "train.log_interval=1",
        "train.eval_interval=0",
        "eval.tasks=[]",
        "checkpoint.interval=0",
        f"launch.nproc_per_node={ranks}",
        *overrides,
    ]
    cmd = (
        [sys.executable, "-m", "dist_llm.cli", *args]
        if ranks == 1
        else torchrun_command(args, nproc_per_node=ranks)
    )
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "tokens_per_s" in r]


def _read_breakdowns(run_dir: str, ranks: int) -> list[dict]:
    out = []
    for rank in range(ranks):
        with open(breakdown_path(run_dir, rank), encoding="utf-8") as f:
            out.append(json.load(f))
    return out


def bench_variants(
    config: str, overrides: list[str], variants: list[Variant], steps: int, warmup: int
) -> list[TrainBenchResult]:
    if not 0 <= warmup < steps:
        raise ConfigError(f"--warmup {warmup} with --steps {steps}: need 0 <= warmup < steps")
    total = steps + PROFILED_STEPS
    profile = f"logging.profile_steps={steps + 1}-{total}"
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, v in enumerate(variants):
            run_dir = os.path.join(tmp, str(i))
            all_records = _run(config, [*overrides, *v.overrides, profile], v.ranks, total, run_dir)
            records = all_records[warmup:steps]  # one record per step: the log interval is 1
            ranks = _read_breakdowns(run_dir, v.ranks)
            threads = records[0]["threads_per_rank"]
            tps = statistics.median(r["tokens_per_s"] for r in records)
            # The logged MFU is against the run's own denominator (a datasheet on known GPUs):
            # times that denominator it is the model FLOP/s per rank, whatever the denominator was.
            achieved = statistics.median(r["mfu"] * r["peak_tflops"] for r in records)
            precision, peaks = ranks[0]["precision"], ranks[0]["peak_tflops"]
            results.append(
                TrainBenchResult(
                    name=v.name,
                    ranks=v.ranks,
                    threads_per_rank=threads,
                    tokens_per_s=tps,
                    tokens_per_s_per_thread=tps / (v.ranks * threads),
                    step_time_s=statistics.median(r["step_time_s"] for r in records),
                    profiled_step_time_s=statistics.median(r["step_time_s"] for r in all_records[steps:]),
                    precision=precision,
                    achieved_tflops=achieved,
                    mfu=achieved / peaks[precision],
                    peak_tflops=peaks,
                    memory={k: all_records[0][k] for k in MEMORY_KEYS if k in all_records[0]},
                    rank_memory=[r["memory"] for r in ranks],
                    breakdown_ms=ranks[0]["phases_ms"],
                    rank_breakdowns=ranks,
                )
            )
    return results


ENGINE_OVERRIDES = {
    "dp": ["engine.dp_shard=1", "engine.dp_replicate=-1"],
    "fsdp": [],
    "zero1": ["engine.type=deepspeed", "engine.zero_stage=1"],
    "zero2": ["engine.type=deepspeed", "engine.zero_stage=2"],
    "zero3": ["engine.type=deepspeed", "engine.zero_stage=3"],
    "zero3-offload": [
        "engine.type=deepspeed",
        "engine.zero_stage=3",
        "engine.offload_optimizer=cpu",
        "engine.offload_params=cpu",
    ],
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


def _throughput_table(results: list[TrainBenchResult]) -> list[str]:
    base = results[0]
    lines = [
        "variant | ranks x threads | tokens/s | tokens/s/thread | step s | MFU (vs peak) | "
        "peak TFLOP/s bf16 / fp32 | params/grads/optim MiB per rank | RSS (GPU peak) MiB per rank | "
        "vs 1st row: total, per thread",
        "---|---|---|---|---|---|---|---|---|---",
    ]
    for r in results:
        memory = "/".join(_mib(r.memory.get(k)) for k in MEMORY_KEYS)
        peaks = " / ".join(f"{r.peak_tflops[p]:.4g}" for p in ("bf16", "fp32"))
        lines.append(
            f"{r.name} | {r.ranks} x {r.threads_per_rank} | {r.tokens_per_s:,.0f} | "
            f"{r.tokens_per_s_per_thread:,.0f} | {r.step_time_s:.3f} | "
            f"{100 * r.mfu:.1f}% ({r.precision} {r.peak_tflops[r.precision]:.4g}) | {peaks} | "
            f"{memory} | {'/'.join(map(_resident, r.rank_memory))} | "
            f"{r.tokens_per_s / base.tokens_per_s:.2f}x, "
            f"{r.tokens_per_s_per_thread / base.tokens_per_s_per_thread:.2f}x"
        )
    return lines


def _resident(memory: dict[str, int]) -> str:
    gpu = memory.get("memory_gpu_peak_bytes")
    return f"{_mib(memory.get('memory_rss_bytes'))}" + (f" ({_mib(gpu)})" if gpu is not None else "")


def _ms(b: dict[str, float], key: str) -> str:
    return f"{b[key]:.1f}" if key in b else "-"


def _comm(b: dict[str, float]) -> str:
    inside = [
        f"{k.removeprefix('comm_in_')} {v:.1f}"
        for k, v in b.items()
        if k.startswith("comm_in_") and v >= 0.05
    ]
    return f"{b['comm']:.1f}" + (f" ({', '.join(inside)})" if inside else "")


def _breakdown_table(results: list[TrainBenchResult]) -> list[str]:
    lines = [
        "variant | step (profiling cost) | data | forward | backward | optimizer | comm exposed | "
        "other | comm total (inside phase)",
        "---|---|---|---|---|---|---|---|---",
    ]
    for r in results:
        b = r.breakdown_ms
        backward = f"{b['forward_backward']:.1f} (fwd+bwd)" if "forward_backward" in b else _ms(b, "backward")
        cost = r.profiled_step_time_s / r.step_time_s - 1
        lines.append(
            f"{r.name} | {b['step']:.1f} ({100 * cost:+.0f}%) | {_ms(b, 'data')} | "
            f"{_ms(b, 'forward')} | {backward} | {_ms(b, 'optimizer')} | {b['comm_exposed']:.1f} | "
            f"{b['other']:.1f} | {_comm(b)}"
        )
    return lines


def format_table(results: list[TrainBenchResult]) -> str:
    return "\n".join(
        [
            *_throughput_table(results),
            "",
            f"Step breakdown on rank 0, ms per step (mean of {PROFILED_STEPS} profiled steps after the timed "
            "ones; profiling cost: their median step vs the timed median):",
            "step = data + forward + backward + optimizer + comm exposed + other.",
            "comm total: time collectives ran (gloo/NCCL); what ran inside a phase is part of that phase "
            "(DDP all-reduces gradients during backward), the rest is exposed.",
            *_breakdown_table(results),
        ]
    )
