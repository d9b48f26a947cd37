"""summary.md: the run in a page of numbers (model, engine, progress, losses, downstream tasks,
speed, checkpoints, resumes) followed by the PNGs, for a reader who wants the outcome without
reading metrics.jsonl."""

from __future__ import annotations

import math
import os
import statistics
from collections import Counter
from typing import Any

from dist_llm.config import Config
from dist_llm.models import count_params
from dist_llm.report.facts import RunFacts
from dist_llm.report.history import RunHistory
from dist_llm.report.plots import MEMORY_SERIES, STATE_KEYS, fmt_bytes, task_names


def _fmt_count(n: float) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:g}"


def _fmt_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.3g} s"
    minutes, secs = divmod(round(s), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _fmt_loss(record: dict[str, Any] | None, key: str) -> str:
    return "n/a" if record is None else f"{record[key]:.4f} (step {record['step']})"


def _finite(records: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Records whose `key` is a number: a diverging run logs inf/nan, which has no min or median."""
    return [r for r in records if r.get(key) is not None and math.isfinite(r[key])]


def _median(records: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in _finite(records, key)]
    return statistics.median(values) if values else None


def _model_line(cfg: Config) -> str:
    m = cfg.model
    heads = f"{m.n_heads} heads" + (f" ({m.kv_heads} KV)" if m.kv_heads != m.n_heads else "")
    size = f"{_fmt_count(count_params(m, non_embedding=True))} non-embedding parameters"
    if m.vocab_size:
        size = f"{_fmt_count(count_params(m))} parameters, {size}"
    return (
        f"{m.arch}: {m.n_layers} layers, d_model {m.d_model}, {heads}, vocab {m.vocab_size:,}, "
        f"sequence {cfg.data.seq_len}; {size}"
    )


def _engine_line(cfg: Config) -> str:
    e, launch = cfg.engine, cfg.launch
    parts = [e.type]
    if e.type == "deepspeed":
        parts.append(f"ZeRO-{e.zero_stage}")
        parts += [
            f"{what} offload to {where}"
            for what, where in (("optimizer", e.offload_optimizer), ("parameter", e.offload_params))
            if where != "none"
        ]
    parts += [f"{name} {n}" for name, n in (("TP", e.tp), ("PP", e.pp)) if n > 1]
    if e.activation_checkpointing:
        parts.append("activation checkpointing")
    ranks = launch.nproc_per_node * launch.nnodes
    where = f" on {launch.nnodes} nodes" if launch.nnodes > 1 else ""
    return f"{', '.join(parts)}; {ranks} rank{'s' if ranks > 1 else ''}{where}; {cfg.train.precision}"


def _step_seconds(h: RunHistory) -> float:
    """Seconds spent in optimizer steps on the final timeline: each logged step time stands for the
    unlogged steps since the previous record (train.log_interval)."""
    total, previous = 0.0, 0
    for r in h.train:
        total += r.get("step_time_s", 0.0) * (r["step"] - previous)
        previous = r["step"]
    return total


def _checkpoint_line(h: RunHistory, facts: RunFacts) -> str:
    on_storage = (
        f"{len(facts.committed_steps)} on storage (steps "
        f"{', '.join(str(s) for s in sorted(facts.committed_steps))})"
        if facts.committed_steps
        else f"none on storage under {facts.checkpoint_root}"
    )
    saves = [r for r in h.saves if not r.get("checkpoint_skipped")]
    parts = [on_storage, f"{len(saves)} saves during the run"]
    if h.committed:
        save_s = _median(h.committed, "checkpoint_save_s")
        took = f" (median {_fmt_seconds(save_s)} from snapshot to commit)" if save_s is not None else ""
        parts.append(f"{len(h.committed)} committed{took}")
    if h.failed:
        failed = ", ".join(str(r["checkpoint_failed"]) for r in h.failed)
        parts.append(f"{len(h.failed)} failed (steps {failed})")
    if len(h.saves) > len(saves):
        parts.append(f"{len(h.saves) - len(saves)} skipped (the previous save was still being written)")
    blocked = sum(r.get("checkpoint_blocked_s") or 0.0 for r in saves)
    return "; ".join(parts) + f"; training blocked {_fmt_seconds(blocked)} in total for snapshots"


def _table(rows: list[tuple[str, str]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]


def _best(records: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    return min(_finite(records, key), key=lambda r: r[key], default=None)


def _run_rows(h: RunHistory, facts: RunFacts) -> list[tuple[str, str]]:
    cfg, last = facts.cfg, h.train[-1]
    rows: list[tuple[str, str]] = []
    if cfg is not None:
        rows += [
            ("Model", _model_line(cfg)),
            ("Engine", _engine_line(cfg)),
            (
                "Optimizer",
                f"AdamW, peak lr {cfg.optim.lr:g}, {cfg.optim.schedule} schedule, "
                f"{cfg.optim.warmup_steps} warmup steps",
            ),
            ("Batch", f"{cfg.train.global_batch_size} sequences x {cfg.data.seq_len} tokens per step"),
        ]
    planned = f" of {cfg.train.max_steps} planned" if cfg is not None else ""
    rows.append(("Steps", f"{last['step']}{planned}"))
    if "consumed_tokens" in last:
        rows.append(("Tokens seen", f"{last['consumed_tokens']:,} ({_fmt_count(last['consumed_tokens'])})"))
    rows.append(
        (
            "Time in training steps",
            f"{_fmt_seconds(_step_seconds(h))} (sum of step times; leaves "
            "out start-up, evaluation and checkpoint waits)",
        )
    )
    resumed = ", ".join(f"step {s}" for s in h.resumed_at)
    rows.append(("Resumes", f"{len(h.resumed_at)}" + (f" (continued at {resumed})" if resumed else "")))
    rows.append(("Checkpoints", _checkpoint_line(h, facts)))
    return rows


def _loss_rows(h: RunHistory) -> list[tuple[str, str]]:
    rows = [
        ("First train loss", _fmt_loss(h.train[0], "loss")),
        ("Last train loss", _fmt_loss(h.train[-1], "loss")),
        ("Best train loss", _fmt_loss(_best(h.train, "loss"), "loss")),
    ]
    if not h.val:
        return rows + [
            (
                "Validation",
                "no validation records (train.eval_interval=0 and the run has not reached its end)",
            )
        ]
    final = h.val[-1]
    return rows + [
        ("Final validation loss", f"{_fmt_loss(final, 'val_loss')}, perplexity {final['val_ppl']:.2f}"),
        ("Best validation loss", _fmt_loss(_best(h.val, "val_loss"), "val_loss")),
    ]


def _speed_rows(h: RunHistory) -> list[tuple[str, str]]:
    rows = []
    for label, key, fmt in (
        ("Median tokens/s (all ranks)", "tokens_per_s", "{:,.0f}"),
        ("Median MFU", "mfu", "{:.2%}"),
        ("Median step time", "step_time_s", "{:.3f} s"),
        ("Median data wait per step", "data_time_s", "{:.4f} s"),
    ):
        value = _median(h.train, key)
        if value is not None:
            rows.append((label, fmt.format(value)))
    return rows + _straggler_rows(h)


def _straggler_rows(h: RunHistory) -> list[tuple[str, str]]:
    """How often each rank was named a straggler, over the per-rank timing checks."""
    if not h.ranks:
        return []
    named = Counter(
        part.split(" (+")[0] for r in h.ranks for part in r.get("stragglers", "").split(", ") if part
    )
    checks = len(h.ranks)
    value = "; ".join(f"{who}: {n} of {checks} checks" for who, n in named.most_common())
    return [("Stragglers", value or f"none in {checks} checks")]


def _memory_rows(h: RunHistory) -> list[tuple[str, str]]:
    rows = [
        (f"Peak {label} (rank 0)", fmt_bytes(max(values)))
        for key, label in MEMORY_SERIES.items()
        if (values := h.series(key)[1])
    ]
    reports = [r for r in h.train if all(k in r for k in STATE_KEYS)]
    if reports:
        parts = ", ".join(f"{k.removesuffix('_bytes')} {fmt_bytes(reports[-1][k])}" for k in STATE_KEYS)
        rows.append(("Model state per rank", f"{parts} (engine report)"))
    return rows


def _task_rows(h: RunHistory) -> list[tuple[str, str]]:
    """Per task: accuracy at the first and last evaluation and at its best, against chance."""
    first, last = h.tasks[0], h.tasks[-1]
    rows = []
    for name in task_names(h):
        parts = []
        for metric in ("acc", "acc_norm"):
            key = f"task/{name}/{metric}"
            best = max(_finite(h.tasks, key), key=lambda r: r[key], default=None)
            if best is not None:
                start = f"{first[key]:.3f} (step {first['step']}) -> " if key in first else ""
                end = f"{last[key]:.3f} (step {last['step']})" if key in last else "n/a"
                parts.append(f"{metric} {start}{end}, best {best[key]:.3f} (step {best['step']})")
        chance = last.get(f"task/{name}/chance")
        parts.append(f"chance {chance:.3f}" if chance is not None else "completion (greedy match)")
        examples = last.get(f"task/{name}/examples")
        rows.append((name, "; ".join(parts) + (f"; {examples} examples" if examples else "")))
    return rows


def format_summary(h: RunHistory, facts: RunFacts, plots: dict[str, str], out_dir: str) -> str:
    """The markdown page; `plots` maps titles to the PNGs written (embedded relative to out_dir)."""
    name = os.path.basename(os.path.normpath(facts.run_dir))
    lines = [
        f"# Run report: {name}",
        "",
        f"Run directory: `{facts.run_dir}`",
        "",
        "## Run",
        "",
        *_table(_run_rows(h, facts)),
        "## Loss",
        "",
        *_table(_loss_rows(h)),
        "## Speed",
        "",
        *_table(_speed_rows(h)),
    ]
    if h.tasks:
        lines += ["## Downstream tasks", "", *_table(_task_rows(h))]
    memory = _memory_rows(h)
    if memory:
        lines += ["## Memory", "", *_table(memory)]
    if facts.notes:
        lines += ["## Notes", "", *(f"- {n}" for n in facts.notes), ""]
    lines += ["## Plots", ""]
    for title, path in plots.items():
        lines += [f"### {title}", "", f"![{title}]({os.path.relpath(path, out_dir)})", ""]
    return "\n".join(lines)
