"""Choosing the checkpoint to resume (or roll back) from and loading it, with fallback.

Rank 0 picks candidates from the manifests alone (newest first); every rank then loads the chosen
one, verifying what it reads. If any rank finds corrupt bytes, all of them move on to the previous
checkpoint, with the reason logged; other errors (a checkpoint of another model) stop the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from dist_llm.checkpoint.discovery import resume_candidates
from dist_llm.checkpoint.state import load_checkpoint
from dist_llm.distributed import World, broadcast_object
from dist_llm.engine.base import Engine
from dist_llm.errors import CheckpointError, CorruptCheckpointError
from dist_llm.log import get_logger

log = get_logger("checkpoint")


def restore_newest(resume: str, root: str, engine: Engine, world: World) -> tuple[str, dict[str, Any]] | None:
    """Load the newest good checkpoint `resume` names (none | auto | a step directory) into `engine`;
    returns (its URI, the trainer state), or None when there is none. Collective."""
    candidates: Iterator[str] | None = None
    while True:
        uri, error = None, None
        if world.is_main:
            try:
                candidates = candidates if candidates is not None else resume_candidates(resume, root)
                uri = next(candidates, None)
            except CheckpointError as e:  # raised on every rank below, so none waits forever
                error = str(e)
        uri, error = broadcast_object((uri, error))
        if error:
            raise CheckpointError(error)
        if uri is None:
            return None
        try:
            return uri, load_checkpoint(uri, engine, world)
        except CorruptCheckpointError as e:
            if resume != "auto":
                raise
            log.warning("skipping checkpoint %s: %s; trying the previous one", uri, e)
