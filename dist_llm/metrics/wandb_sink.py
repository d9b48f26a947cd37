"""Weights & Biases sink: rank 0's metric records, the resolved config and checkpoint events.

Offline by default: the run is written under <run_dir>/wandb with no account or network, and can be
uploaded later with `wandb sync`. The run id lives in <run_dir>/wandb_run_id so that a run resumed
from a checkpoint continues the same W&B run instead of starting a new one.
"""

from __future__ import annotations

import os
from typing import Any

from dist_llm.config import Config
from dist_llm.errors import ConfigError
from dist_llm.log import get_logger
from dist_llm.metrics.sinks import grouped_key

log = get_logger("metrics")

RUN_ID_FILE = "wandb_run_id"


def _previous_run_id(run_dir: str) -> str | None:
    try:
        with open(os.path.join(run_dir, RUN_ID_FILE), encoding="utf-8") as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


class WandbSink:
    """One W&B run per training run; `resumed` (the trainer restored a checkpoint) reuses the id."""

    def __init__(self, cfg: Config, resumed: bool) -> None:
        import wandb  # about a second to import: only runs that enable W&B pay for it

        w = cfg.logging.wandb
        run_dir = cfg.logging.run_dir
        os.makedirs(run_dir, exist_ok=True)
        # A run started from step 0 in a reused directory is a new experiment, not a continuation:
        # continuing the old W&B run would have its steps dropped as out of order.
        run_id = _previous_run_id(run_dir) if resumed else None
        settings = wandb.Settings(
            silent=True,  # our logger reports where the run goes; no wandb banners on the console
            console="off",  # do not wrap stdout/stderr of a training process
            save_code=False,
            x_save_requirements=False,  # a pip freeze adds ~0.3 s to every start; the config is logged
        )
        try:
            self.run = wandb.init(
                dir=run_dir,
                mode=w.mode,
                project=w.project,
                entity=w.entity or None,
                name=w.name or os.path.basename(os.path.abspath(run_dir)),
                tags=[t.strip() for t in w.tags.split(",") if t.strip()],
                config=cfg.to_dict(),
                id=run_id,
                resume="allow" if run_id else None,
                reinit="create_new",  # independent of any run the calling program has open
                settings=settings,
            )
        except wandb.errors.UsageError as e:  # e.g. online without an API key; raised, never prompted
            raise ConfigError(
                f"logging.wandb.mode={w.mode}: W&B could not start ({e}). Run `wandb login` "
                "or set WANDB_API_KEY, or use logging.wandb.mode=offline"
            ) from e
        with open(os.path.join(run_dir, RUN_ID_FILE), "w", encoding="utf-8") as f:
            f.write(self.run.id)
        if w.mode == "offline":
            log.info(
                "W&B run %s%s written offline to %s; upload with `wandb sync %s`",
                self.run.id,
                " (resumed)" if run_id else "",
                self.run.settings.sync_dir,
                self.run.settings.sync_dir,
            )
        else:
            log.info("W&B run %s%s: %s", self.run.id, " (resumed)" if run_id else "", self.run.url)

    def write(self, m: dict[str, Any]) -> None:
        # Records of one step (train, validation, checkpoint) share `step`: W&B merges them into one
        # row and commits it when a later step arrives, so none is dropped as out of order.
        numbers = {grouped_key(k): v for k, v in m.items() if k != "step" and not isinstance(v, str)}
        self.run.log(numbers, step=m["step"])
        for k, v in m.items():
            if isinstance(v, str):  # e.g. checkpoint_uri: the latest value, not a chart
                self.run.summary[grouped_key(k)] = v

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)
