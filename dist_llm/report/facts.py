"""What a run directory holds besides its metrics: the resolved config and the checkpoints."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from dist_llm.checkpoint.discovery import committed_steps
from dist_llm.config import Config, load_config
from dist_llm.errors import ConfigError
from dist_llm.log import get_logger

log = get_logger("report")


@dataclass
class RunFacts:
    run_dir: str
    cfg: Config | None
    """The run's resolved config.yaml; None when the directory has none."""
    checkpoint_root: str
    committed_steps: list[int]
    """Steps with a committed checkpoint on storage now (retention may have removed older ones)."""
    notes: list[str] = field(default_factory=list)
    """What the report could not show, and why."""


def read_facts(run_dir: str) -> RunFacts:
    """The config training wrote to <run_dir>/config.yaml and the committed checkpoints under
    checkpoint.dir (default <run_dir>/checkpoints). A missing or unreadable config is a note in the
    summary, not an error: the metrics alone make most of the report."""
    path = os.path.join(run_dir, "config.yaml")
    notes: list[str] = []
    cfg = None
    if os.path.isfile(path):
        try:
            cfg = load_config(path)
        except ConfigError as e:  # e.g. a run from a version with other keys: the metrics still plot
            log.warning("%s; the report goes on without it", e)
            notes.append(f"{path} could not be read ({e}): model, engine and planned steps are not shown")
    else:
        notes.append(f"{path} not found: model, engine and planned steps are not shown")
    # The directory given here, not the config's logging.run_dir: that may be relative to wherever
    # training was started, or the run may have been moved since.
    root = (cfg.checkpoint.dir if cfg is not None else "") or os.path.join(run_dir, "checkpoints")
    return RunFacts(run_dir, cfg, root, committed_steps(root), notes)
