"""The planner against reality: for a few layouts on 2-4 CPU ranks, each rank's predicted memory
(`dist_llm.plan`, exactly as `dist-llm plan --gpu cpu` computes it) against the peak resident
memory measured in a real run of that layout (`memory_worker`: the training phase's peak, sampled
every 5 ms), and the predicted tokens/s of the layouts against the measured ones, as ratios to
the first layout measured in the same benchmark.

The planner predicts live bytes; CPU ranks return freed large buffers to the OS
(`distributed.host_allocator`), so their resident peak follows what is live."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from dataclasses import dataclass

from dist_llm.bench.memory import read_reports, torchrun_worker
from dist_llm.plan.fit import load_for_planning
from dist_llm.plan.hardware import GB, hardware
from dist_llm.plan.layouts import configured_layout
from dist_llm.plan.memory import estimate_memory
from dist_llm.plan.planner import plan_precision
from dist_llm.plan.shares import rank_share
from dist_llm.plan.step_time import estimate_time

LAYOUTS = {
    "fsdp2": (2, ["engine.dp_shard=2"]),
    "tp2": (2, ["engine.tp=2"]),
    "pp2": (2, ["engine.pp=2"]),
    "fsdp4": (4, ["engine.dp_shard=4"]),
    "tp2-fsdp2": (4, ["engine.tp=2", "engine.dp_shard=2"]),
}


@dataclass
class LayoutCheck:
    layout: str
    ranks: int
    predicted_gb: list[float]
    """Per rank: the planner's total (state + activations + buffers + runtime)."""
    components_gb: dict[str, float]
    """Rank 0's prediction by component."""
    measured_gb: list[float]
    """Per rank: peak resident memory while training."""
    measured_start_gb: list[float]
    """Per rank: resident memory before the model is built (the process's own cost)."""
    error: list[float]
    """Per rank: predicted / measured - 1."""
    predicted_tokens_per_s: float
    measured_tokens_per_s: float


def _measured_tokens_per_s(run_dir: str) -> float:
    """Median over the steps after the first (which pays for warm-up) of the run's tokens/s."""
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]
    return statistics.median(speeds)


def check_layout_against_run(
    config: str, overrides: list[str], name: str, steps: int, work_dir: str | None
) -> LayoutCheck:
    nproc, keys = LAYOUTS[name]
    run = [*overrides, *keys, f"launch.nproc_per_node={nproc}"]
    cfg = load_for_planning(config, run)
    cfg.validate(world_size=nproc)
    hw = hardware("cpu", nproc, cfg.logging.peak_tflops)
    precision = plan_precision(cfg, hw)
    cfg.train.precision = precision
    layout = configured_layout(cfg, nproc)
    memories = [
        estimate_memory(cfg, layout, rank_share(cfg, nproc, r), nproc, precision, hw) for r in range(nproc)
    ]
    predicted_speed = estimate_time(cfg, layout, nproc, nproc, precision, hw).tokens_per_s
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="bench-plan-") as tmp:
        torchrun_worker(
            nproc,
            [
                config,
                f"{tmp}/out",
                f"logging.run_dir={tmp}/run",
                "checkpoint.interval=0",
                "checkpoint.async_save=false",
                "train.eval_interval=0",
                "eval.tasks=[]",
                "train.eval_batches=1",
                "train.log_interval=1",
                f"train.max_steps={steps}",
                *run,
            ],
            os.getcwd(),
        )
        reports = read_reports(f"{tmp}/out", nproc)
        measured_speed = _measured_tokens_per_s(f"{tmp}/run")
    predicted = [m.device_total / GB for m in memories]
    measured = [r["peaks"]["train"] / GB for r in reports]
    return LayoutCheck(
        layout=name,
        ranks=nproc,
        predicted_gb=predicted,
        components_gb={k: v / GB for k, v in memories[0].components().items()},
        measured_gb=measured,
        measured_start_gb=[r["peaks"]["start"] / GB for r in reports],
        error=[p / m - 1 for p, m in zip(predicted, measured)],
        predicted_tokens_per_s=predicted_speed,
        measured_tokens_per_s=measured_speed,
    )


def bench_plan(
    config: str,
    overrides: list[str],
    layouts: list[str],
    steps: int,
    work_dir: str | None = None,
) -> list[LayoutCheck]:
    unknown = [n for n in layouts if n not in LAYOUTS]
    if unknown:
        raise ValueError(f"unknown layouts {unknown}; choose from {', '.join(LAYOUTS)}")
    return [check_layout_against_run(config, overrides, n, steps, work_dir) for n in layouts]


def format_table(results: list[LayoutCheck]) -> str:
    base = results[0]
    lines = [
        "layout | ranks | predicted GB per rank (rank 0: params/grads/optimizer/activations/buffers/"
        "runtime) | measured train peak GB per rank | predicted / measured - 1 | "
        "tokens/s predicted (vs first) | tokens/s measured (vs first)",
        "---|---|---|---|---|---|---",
    ]
    for r in results:
        parts = "/".join(f"{v:.2f}" for v in r.components_gb.values())
        speed = r.predicted_tokens_per_s / base.predicted_tokens_per_s
        lines.append(
            f"{r.layout} | {r.ranks} | {', '.join(f'{v:.2f}' for v in r.predicted_gb)} ({parts}) | "
            f"{', '.join(f'{v:.2f}' for v in r.measured_gb)} | "
            f"{', '.join(f'{100 * e:+.1f}%' for e in r.error)} | "
            f"{r.predicted_tokens_per_s:,.0f} ({speed:.2f}x) | "
            f"{r.measured_tokens_per_s:,.0f} ({r.measured_tokens_per_s / base.measured_tokens_per_s:.2f}x)"
        )
    predicted = sorted(results, key=lambda r: -r.predicted_tokens_per_s)
    measured = sorted(results, key=lambda r: -r.measured_tokens_per_s)
    agree = [r.layout for r in predicted] == [r.layout for r in measured]
    lines.append(
        f"ranking by tokens/s: predicted {' > '.join(r.layout for r in predicted)}; measured "
        f"{' > '.join(r.layout for r in measured)} ({'agree' if agree else 'DISAGREE'})"
    )
    return "\n".join(lines)
