"""Find the checkpoint to resume from: the newest committed, verified one."""

from __future__ import annotations

from dist_llm.checkpoint import layout
from dist_llm.checkpoint.commit import verify
from dist_llm.checkpoint.storage import exists, join, list_dirs, read_bytes
from dist_llm.errors import CheckpointError
from dist_llm.log import get_logger

log = get_logger("checkpoint")


def committed_steps(root: str) -> list[int]:
    """Steps with a COMMITTED marker, newest first."""
    steps = [s for s in (layout.step_of(n) for n in list_dirs(root)) if s is not None]
    return sorted((s for s in steps if exists(join(layout.step_uri(root, s), layout.COMMITTED))),
                  reverse=True)


def find_resumable(root: str) -> str | None:
    """URI of the newest checkpoint that verifies; corrupt/partial newer ones are reported and skipped."""
    pointed = None
    if exists(join(root, layout.LATEST)):
        pointed = layout.step_of(read_bytes(join(root, layout.LATEST)).decode().strip())
    candidates = committed_steps(root)
    if pointed is not None and pointed not in candidates:
        log.warning("%s points at step %s, which is not committed; ignoring it",
                    join(root, layout.LATEST), pointed)
    for step in candidates:
        uri = layout.step_uri(root, step)
        try:
            verify(uri)
            return uri
        except (CheckpointError, ValueError, KeyError) as e:
            log.warning("skipping checkpoint %s: %s; trying the previous one", uri, e)
    return None


def resolve_resume(resume: str, root: str) -> str | None:
    """`none` -> None; `auto` -> newest good checkpoint under root (None if there is none);
    anything else is a checkpoint directory URI that must verify."""
    if resume == "none":
        return None
    if resume == "auto":
        return find_resumable(root)
    verify(resume)
    return resume
