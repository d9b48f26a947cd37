"""The report's PNGs: loss, throughput, learning rate, memory, per-rank timings and downstream
tasks, drawn from a RunHistory.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot, no display, no global
backend switch), so a report works on a headless node and leaves the caller's matplotlib alone.
Resumes are drawn as dotted vertical lines: a jump in throughput or memory there is the restart.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator

from dist_llm.report.history import RunHistory

GIB = 2**30
# Memory fields drawn per step, with their legend labels (absent in runs from before they existed).
MEMORY_SERIES = {"memory_rss_bytes": "host RSS", "memory_gpu_peak_bytes": "GPU peak allocated"}
STATE_KEYS = ("param_bytes", "grad_bytes", "optimizer_bytes")
"""The engine's memory report: on the first logged step of each attempt."""
_TRAIN_COLOR, _VAL_COLOR = "tab:blue", "tab:orange"
_SOURCE_COLORS = ("tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def _rolling_median(x: list[float], y: list[float]) -> tuple[np.ndarray, list[float]] | None:
    """A centred rolling median over ~1/30 of the run, evaluated at <= 600 points (a long run's
    window spans thousands of steps), or None when there are too few points to need one. Medians
    ignore the odd slow step (a checkpoint, an eval) that a mean would smear over its neighbours."""
    half = len(y) // 60
    if half < 1:
        return None
    a = np.asarray(y, dtype=float)
    a[~np.isfinite(a)] = np.nan
    centres = np.unique(np.linspace(0, len(a) - 1, min(len(a), 600)).round().astype(int))
    with warnings.catch_warnings():  # a window of only non-finite values is NaN: a gap, as it should be
        warnings.simplefilter("ignore", RuntimeWarning)
        medians = [float(np.nanmedian(a[max(0, c - half) : c + half + 1])) for c in centres]
    return np.asarray(x, dtype=float)[centres], medians


def _raw_and_smoothed(ax: Axes, x: list[float], y: list[float], label: str, color: str) -> None:
    smooth = _rolling_median(x, y)
    if smooth is None:
        ax.plot(x, y, color=color, lw=1.2, label=label)
        return
    ax.plot(x, y, color=color, lw=0.7, alpha=0.35, label=f"{label} (per step)")
    ax.plot(*smooth, color=color, lw=1.6, label=f"{label} (rolling median)")


def _mark_resumes(ax: Axes, xs: list[float]) -> None:
    for i, x in enumerate(xs):
        ax.axvline(x, color="0.4", ls=":", lw=1.0, label="resume" if i == 0 else None)


def _finish(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def _save(fig: Figure, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_loss(h: RunHistory, path: str) -> str:
    """Train and validation loss against steps (left) and tokens seen (right)."""
    fig = Figure(figsize=(12, 4.5))
    train_steps, train_loss = h.series("loss")
    val_steps, val_loss = h.series("val_loss", h.val)
    sources = sorted({k for r in h.val for k in r if k.startswith("val_loss/")})
    for ax, to_x, xlabel in (
        (fig.add_subplot(1, 2, 1), lambda s: s, "step"),
        (fig.add_subplot(1, 2, 2), h.tokens_for, "tokens seen"),
    ):
        _raw_and_smoothed(ax, to_x(train_steps), train_loss, "train loss", _TRAIN_COLOR)
        if val_steps:
            ax.plot(to_x(val_steps), val_loss, "o-", color=_VAL_COLOR, ms=4, lw=1.4, label="validation loss")
        for i, key in enumerate(sources):
            steps, values = h.series(key, h.val)
            ax.plot(
                to_x(steps),
                values,
                "--",
                color=_SOURCE_COLORS[i % len(_SOURCE_COLORS)],
                lw=1.0,
                label=key.replace("val_loss/", "validation: "),
            )
        _mark_resumes(ax, to_x(h.resumed_at))
        _finish(ax, f"Loss vs {xlabel}", xlabel, "cross-entropy loss (nats/token)")
    fig.axes[1].xaxis.set_major_formatter(EngFormatter())
    return _save(fig, path)


def plot_throughput(h: RunHistory, path: str) -> str:
    """Tokens/s over all ranks (top) and MFU (bottom) per logged step."""
    fig = Figure(figsize=(10, 6.5))
    top, bottom = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    steps, tokens_per_s = h.series("tokens_per_s")
    _raw_and_smoothed(top, steps, tokens_per_s, "tokens/s", _TRAIN_COLOR)
    top.yaxis.set_major_formatter(EngFormatter())
    _mark_resumes(top, h.resumed_at)
    _finish(top, "Throughput (all ranks)", "step", "tokens/s")
    steps, mfu = h.series("mfu")
    _raw_and_smoothed(bottom, steps, [100 * m for m in mfu], "MFU", "tab:green")
    _mark_resumes(bottom, h.resumed_at)
    peaks = sorted({r["peak_tflops"] for r in h.train if "peak_tflops" in r})
    against = f" (against {', '.join(f'{p:g}' for p in peaks)} TFLOP/s peak per device)" if peaks else ""
    _finish(bottom, f"Model FLOPs utilization{against}", "step", "MFU (%)")
    return _save(fig, path)


def plot_lr(h: RunHistory, path: str) -> str:
    """The learning-rate schedule as run (top) and the gradient norm it produced (bottom)."""
    fig = Figure(figsize=(10, 6.5))
    top, bottom = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    steps, lr = h.series("lr")
    top.plot(steps, lr, color="tab:purple", lw=1.4, label="learning rate")
    _mark_resumes(top, h.resumed_at)
    _finish(top, "Learning rate schedule", "step", "learning rate")
    steps, grad_norm = h.series("grad_norm")
    _raw_and_smoothed(bottom, steps, grad_norm, "grad norm", "tab:red")
    _mark_resumes(bottom, h.resumed_at)
    _finish(bottom, "Gradient norm", "step", "global L2 norm")
    return _save(fig, path)


def has_memory(h: RunHistory) -> bool:
    return any(key in r for r in h.train for key in MEMORY_SERIES)


def plot_memory(h: RunHistory, path: str) -> str:
    """Per-step memory of rank 0, with its parameters + gradients + optimizer state as a floor."""
    fig = Figure(figsize=(10, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for key, label in MEMORY_SERIES.items():
        steps, values = h.series(key)
        if steps:
            ax.plot(steps, [v / GIB for v in values], lw=1.4, label=label)
    reports = [r for r in h.train if all(k in r for k in STATE_KEYS)]
    if reports:  # the newest attempt's engine report
        state = sum(reports[-1][k] for k in STATE_KEYS)
        ax.axhline(
            state / GIB,
            color="0.3",
            ls="--",
            lw=1.0,
            label=f"params + grads + optimizer state ({fmt_bytes(state)})",
        )
    _mark_resumes(ax, h.resumed_at)
    ax.set_ylim(bottom=0)
    _finish(ax, "Memory per rank (rank 0)", "step", "GiB")
    return _save(fig, path)


_RANK_BUSY = re.compile(r"rank(\d+)_busy_ms")


def rank_busy(record: dict[str, Any]) -> dict[int, float]:
    """Rank -> its busy ms per step (step less waiting for others) in one rank-timing record."""
    return {int(m[1]): v for k, v in record.items() if (m := _RANK_BUSY.fullmatch(k))}


def plot_ranks(h: RunHistory, path: str) -> str:
    """Per rank: its time per step split into own work and waiting for others, averaged over the
    checks (top); each check's excess over the median rank, stragglers labelled (bottom)."""
    fig = Figure(figsize=(10, 6.5))
    top, bottom = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    busy = [rank_busy(r) for r in h.ranks]
    ranks = sorted({rank for b in busy for rank in b})
    mean_busy = [np.mean([b[r] for b in busy if r in b]) for r in ranks]
    mean_wait = [
        np.mean([rec[f"rank{r}_wait_ms"] for rec in h.ranks if f"rank{r}_wait_ms" in rec]) for r in ranks
    ]
    named = {r: sum(f"rank {r} on " in rec.get("stragglers", "") for rec in h.ranks) for r in ranks}
    colors = ["tab:red" if named[r] else "tab:blue" for r in ranks]
    top.bar(ranks, mean_busy, color=colors, label="own work (busy)")
    top.bar(ranks, mean_wait, bottom=mean_busy, color="0.75", label="waiting for other ranks")
    for r, b, w in zip(ranks, mean_busy, mean_wait):
        if named[r]:
            top.annotate(
                f"straggler {named[r]}/{len(h.ranks)}", (r, b + w), ha="center", va="bottom", fontsize=8
            )
    top.xaxis.set_major_locator(MaxNLocator(integer=True))
    _finish(
        top, f"Time per step by rank (mean of {len(h.ranks)} checks; red: named a straggler)", "rank", "ms"
    )
    for r in ranks:
        xs = [rec["step"] for rec in h.ranks if f"rank{r}_excess" in rec]
        ys = [100 * rec[f"rank{r}_excess"] for rec in h.ranks if f"rank{r}_excess" in rec]
        if named[r]:
            bottom.plot(xs, ys, marker="o", lw=1.4, label=f"rank {r}")
        else:
            bottom.plot(xs, ys, color="0.6", lw=0.8)
    thresholds = sorted({rec["straggler_threshold"] for rec in h.ranks if "straggler_threshold" in rec})
    for t in thresholds:
        bottom.axhline(100 * t, color="tab:red", ls="--", lw=1.0, label=f"threshold +{100 * t:.0f}%")
    _mark_resumes(bottom, h.resumed_at)
    _finish(
        bottom, "Own work vs the median rank of its stage (grey: never a straggler)", "step", "excess (%)"
    )
    return _save(fig, path)


def task_names(h: RunHistory) -> list[str]:
    """The tasks of the run's task records, in first-seen order (keys task/<name>/acc)."""
    keys = dict.fromkeys(k for r in h.tasks for k in r if k.endswith("/acc") and k.count("/") == 2)
    return [k.split("/")[1] for k in keys]


def plot_tasks(h: RunHistory, path: str) -> str:
    """Each task's accuracy (solid) and length-normalized accuracy (dashed) against its chance level
    (dotted) over the run."""
    fig = Figure(figsize=(10, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for i, name in enumerate(task_names(h)):
        color = _SOURCE_COLORS[i % len(_SOURCE_COLORS)]
        ax.plot(*h.series(f"task/{name}/acc", h.tasks), "o-", color=color, ms=4, lw=1.4, label=f"{name} acc")
        steps, acc_norm = h.series(f"task/{name}/acc_norm", h.tasks)
        if steps:
            ax.plot(steps, acc_norm, "s--", color=color, ms=3, lw=1.0, label=f"{name} acc_norm")
        _, chance = h.series(f"task/{name}/chance", h.tasks)
        if chance:
            ax.axhline(chance[-1], color=color, ls=":", lw=1.0, label=f"{name} chance")
    _mark_resumes(ax, h.resumed_at)
    ax.set_ylim(0, 1)
    _finish(ax, "Downstream tasks", "step", "accuracy")
    return _save(fig, path)


# png name -> (title in the summary, drawer, the train-record key it cannot be drawn without)
PLOTS: dict[str, tuple[str, Callable[[RunHistory, str], str], str | None]] = {
    "loss.png": ("Loss", plot_loss, None),
    "throughput.png": ("Throughput and MFU", plot_throughput, "tokens_per_s"),
    "lr.png": ("Learning rate and gradient norm", plot_lr, "lr"),
    "memory.png": ("Memory", plot_memory, None),
    "ranks.png": ("Per-rank timings and stragglers", plot_ranks, None),
    "tasks.png": ("Downstream tasks", plot_tasks, None),
}


def _why_not(h: RunHistory, name: str, needs: str | None) -> str | None:
    if name == "memory.png" and not has_memory(h):
        return f"no memory fields ({', '.join(MEMORY_SERIES)}) in the train records: the run predates them"
    if name == "ranks.png" and not any(rank_busy(r) for r in h.ranks):
        return "no per-rank timing records (train.straggler_interval=0, or fewer steps than one interval)"
    if name == "tasks.png" and not h.tasks:
        return "no task evaluations (eval.tasks is empty)"
    if needs and not h.series(needs)[0]:
        return f"no {needs} in the train records"
    return None


def write_plots(h: RunHistory, out_dir: str) -> tuple[dict[str, str], dict[str, str]]:
    """({title: path written}, {png name: why it was not drawn})."""
    written, skipped = {}, {}
    for name, (title, draw, needs) in PLOTS.items():
        reason = _why_not(h, name, needs)
        if reason:
            skipped[name] = reason
        else:
            written[title] = draw(h, os.path.join(out_dir, name))
    return written, skipped
