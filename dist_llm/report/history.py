"""A run's metrics.jsonl as one timeline: records sorted by kind, resumed attempts stitched together.

A resumed run appends to the same file, so a step can appear more than once: after a crash at step
37 and a resume from the checkpoint at 20, steps 21..37 are logged again. The later attempt is the
run that continued, so its records replace every earlier record from the step it restarted at on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dist_llm.errors import DataError

METRICS_FILE = "metrics.jsonl"

# The engine's memory report rides on the first logged step of every training process
# (callbacks/metrics.py), so it marks where an attempt starts even when steps do not go back.
_ATTEMPT_MARKER = "param_bytes"


@dataclass
class RunHistory:
    train: list[dict[str, Any]] = field(default_factory=list)
    """Train step records (loss, lr, tokens_per_s, ...), one per logged step, by step."""
    val: list[dict[str, Any]] = field(default_factory=list)
    """Validation records (val_loss, val_ppl, val_loss/<source>), by step."""
    tasks: list[dict[str, Any]] = field(default_factory=list)
    """Downstream task records (task/acc, task/<name>/acc, ...), by step."""
    saves: list[dict[str, Any]] = field(default_factory=list)
    """Checkpoint save records (checkpoint_blocked_s, checkpoint_skipped), by step."""
    committed: list[dict[str, Any]] = field(default_factory=list)
    """Checkpoint outcome records: `checkpoint_committed` = the checkpoint's step (the record's own
    step is when training noticed), with checkpoint_save_s; by checkpoint step."""
    failed: list[dict[str, Any]] = field(default_factory=list)
    """Checkpoint outcome records of saves that did not commit (`checkpoint_failed` = its step)."""
    ranks: list[dict[str, Any]] = field(default_factory=list)
    """Per-rank timing records (`metrics.rank_timing`: rank<r>_busy_ms, stragglers), by step."""
    resumed_at: list[int] = field(default_factory=list)
    """First logged train step of each attempt after the first: one entry per resume."""

    def series(self, key: str, records: list[dict[str, Any]] | None = None) -> tuple[list[int], list[float]]:
        """(steps, values) of the records (default: train) that carry `key`."""
        rows = [r for r in (self.train if records is None else records) if r.get(key) is not None]
        return [r["step"] for r in rows], [float(r[key]) for r in rows]

    def tokens_for(self, steps: list[int]) -> list[float]:
        """Tokens consumed by the end of each step, interpolated between logged train steps (a
        validation at step 0 has seen none)."""
        rows = [r for r in self.train if "consumed_tokens" in r]
        xs = [0] + [r["step"] for r in rows]
        ys = [0.0] + [float(r["consumed_tokens"]) for r in rows]
        return [float(t) for t in np.interp(steps, xs, ys)]


# What identifies a record of each kind: outcome records name the checkpoint they are about, and
# two of them can arrive at the same training step.
_KEYS = {
    "train": "step",
    "val": "step",
    "tasks": "step",
    "saves": "step",
    "committed": "checkpoint_committed",
    "failed": "checkpoint_failed",
    "ranks": "step",
}


def _kind(record: dict[str, Any]) -> str | None:
    if "val_loss" in record:
        return "val"
    if "task/acc" in record:
        return "tasks"
    if "checkpoint_committed" in record:
        return "committed"
    if "checkpoint_failed" in record:
        return "failed"
    if "checkpoint_blocked_s" in record:
        return "saves"
    if "straggler_count" in record:
        return "ranks"
    if "loss" in record:
        return "train"
    return None  # a kind this report does not draw (written by a newer version): left out


def _is_step(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse(path: str, number: int, line: str) -> tuple[str, dict[str, Any]] | None:
    """(kind, record) of one line; None for a kind this report does not draw (from a newer version)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno}); a line cut "
            "short by a killed process? Delete or repair that line and run the report "
            "again"
        ) from None
    if not isinstance(record, dict):
        raise DataError(
            f"{path}:{number}: a JSON {type(record).__name__}, not an object; every line of "
            'metrics.jsonl is one record such as {"step": 1, "loss": ...}'
        )
    kind = _kind(record)
    for key in dict.fromkeys(("step", _KEYS.get(kind, "step"))):
        if not _is_step(record.get(key)):
            raise DataError(
                f"{path}:{number}: {key}={record.get(key)!r}, expected a step number >= 0; "
                "every record names the step it belongs to. Delete or repair that line"
            )
    return None if kind is None else (kind, record)


def read_history(run_dir: str) -> RunHistory:
    """Read <run_dir>/metrics.jsonl; DataError naming file:line on a line that is not a record."""
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.isfile(path):
        raise DataError(
            f"{path}: not found; a run directory holds the metrics.jsonl training writes "
            "(logging.jsonl=true). Pass the run's logging.run_dir"
        )
    kept: list[tuple[str, dict[str, Any]]] = []
    history = RunHistory()
    last_train_step: int | None = None
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parsed = _parse(path, number, line)
            if parsed is None:
                continue
            kind, record = parsed
            step = record["step"]
            if kind == "train":
                if last_train_step is not None and (step <= last_train_step or _ATTEMPT_MARKER in record):
                    history.resumed_at.append(step)
                    kept = [(k, r) for k, r in kept if r["step"] < step]
                last_train_step = step
            kept.append((kind, record))
    if not any(kind == "train" for kind, _ in kept):
        raise DataError(
            f"{path}: no training step records; the run stopped before its first logged "
            "step (train.log_interval), or this is not a training run's metrics file"
        )
    for kind, record in kept:
        getattr(history, kind).append(record)
    for kind, key in _KEYS.items():
        by_key = {r[key]: r for r in getattr(history, kind)}  # a repeated step: the later wins
        setattr(history, kind, [by_key[k] for k in sorted(by_key)])
    return history
