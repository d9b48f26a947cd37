"""Names inside a checkpoint root. One place, so writer, reader and retention agree."""

from __future__ import annotations

import re

from dist_llm.checkpoint.storage import join

LATEST = "latest"
MANIFEST = "manifest.json"
COMMITTED = "COMMITTED"
TRAINER = "trainer.json"
STATE_METADATA = "state/.metadata"  # DCP metadata: every tensor's chunks and where each one is stored
DEEPSPEED = "deepspeed/"  # DeepSpeed's own files (per-rank ZeRO partitions), under their names

_STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def step_of(name: str) -> int | None:
    match = _STEP_DIR.match(name)
    return int(match.group(1)) if match else None


def rng_name(rank: int) -> str:
    return f"rng-rank{rank:05d}.pt"


def state_file(rank: int) -> str:
    """The DCP file with everything rank `rank` saved (its shards, the replicated items it was given)."""
    return f"state/rank-{rank:05d}.distcp"


def rank_done_name(rank: int) -> str:
    """Per-rank note 'my files are durable' with their records; rank 0 commits once all exist."""
    return f"rank-done-{rank:05d}.json"


def step_uri(root: str, step: int) -> str:
    return join(root, step_dir_name(step))
