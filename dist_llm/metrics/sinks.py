"""Where metrics go: console (human, with ETA) and JSONL (machine, one line per record).

W&B is `wandb_sink`, TensorBoard `tensorboard_sink`. A record is one of: a training step (`loss`,
...), a validation (`val_loss`, ...), a task evaluation (`task/acc`, ...), a checkpoint snapshot
(`checkpoint_blocked_s`), a checkpoint outcome (`checkpoint_committed` or `checkpoint_failed`) or
per-rank timings (`ranks_busy_ms`, `rank<r>_..._ms`; `metrics.rank_timing`). All carry `step`;
consumers pick the kind they read by its keys."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Protocol

from dist_llm.log import get_logger

log = get_logger("metrics")


class Sink(Protocol):
    def write(self, metrics: dict[str, Any]) -> None: ...

    def close(self, failed: bool = False) -> None:
        """`failed`: training raised (a W&B run is then marked failed, not finished)."""


class ConsoleSink:
    def __init__(self, max_steps: int) -> None:
        self.max_steps = max_steps

    def write(self, m: dict[str, Any]) -> None:
        if "val_loss" in m:
            log.info("step %d | val_loss %.4f | val_ppl %.2f", m["step"], m["val_loss"], m["val_ppl"])
            return
        if "task/acc" in m:
            log.info("step %d | %s", m["step"], format_tasks(m))
            return
        if "checkpoint_blocked_s" in m:
            if m["checkpoint_skipped"]:
                return  # the writer already warned
            log.info(
                "step %d | checkpoint snapshot blocked training %.3fs", m["step"], m["checkpoint_blocked_s"]
            )
            return
        if "checkpoint_committed" in m or "checkpoint_failed" in m:
            return  # the writer already logged the outcome
        if "straggler_count" in m:
            return  # the straggler check already logged it, with the details
        eta = m.get("eta_s")
        log.info(
            "step %d/%d | loss %.4f | lr %.2e | gnorm %.3f | %s tok/s | MFU %.1f%% | ETA %s",
            m["step"],
            self.max_steps,
            m["loss"],
            m["lr"],
            m["grad_norm"],
            f"{m['tokens_per_s']:,.0f}",
            100 * m["mfu"],
            format_eta(eta),
        )

    def close(self, failed: bool = False) -> None:
        pass


def format_tasks(m: dict[str, Any]) -> str:
    """A task record in one line: the averages, then each task's accuracies against chance."""
    parts = [f"task acc {m['task/acc']:.3f}"]
    if "task/acc_norm" in m:
        parts[0] += f" acc_norm {m['task/acc_norm']:.3f}"
    names = [
        k.removeprefix("task/").removesuffix("/acc") for k in m if k.endswith("/acc") and k.count("/") == 2
    ]
    for name in names:
        line = f"{name} acc {m[f'task/{name}/acc']:.3f}"
        if f"task/{name}/acc_norm" in m:
            line += f" acc_norm {m[f'task/{name}/acc_norm']:.3f} (chance {m[f'task/{name}/chance']:.3f})"
        parts.append(f"{line}, {m[f'task/{name}/examples']} examples")
    return " | ".join(parts)


def grouped_key(key: str) -> str:
    """Our flat record keys grouped into dashboard sections (W&B, TensorBoard): eval/, task/ (as
    they are), checkpoint/, memory/, ranks/ (per-rank timings, stragglers), train/."""
    if key.startswith("task/"):
        return key
    if key.startswith("val_"):
        return f"eval/{key}"
    if key.startswith("checkpoint_"):
        return f"checkpoint/{key.removeprefix('checkpoint_')}"
    if key.startswith(("rank", "straggler")):
        return f"ranks/{key}"
    if key.endswith("_bytes"):
        return f"memory/{key.removeprefix('memory_')}"
    return f"train/{key}"


def format_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


class JsonlSink:
    """Appends, so a resumed run continues the same file."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")

    def write(self, m: dict[str, Any]) -> None:
        self._file.write(json.dumps(m) + "\n")
        self._file.flush()

    def close(self, failed: bool = False) -> None:
        self._file.close()
