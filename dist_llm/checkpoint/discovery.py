"""Find checkpoints to resume from: committed ones whose manifest checks out, newest first."""

from __future__ import annotations

from collections.abc import Iterator

from dist_llm.checkpoint import layout
from dist_llm.checkpoint.commit import check_manifest
from dist_llm.checkpoint.storage import exists, join, list_dirs, read_bytes
from dist_llm.errors import CheckpointError
from dist_llm.log import get_logger

log = get_logger("checkpoint")


def committed_steps(root: str) -> list[int]:
    """Steps with a COMMITTED marker, newest first."""
    steps = [s for s in (layout.step_of(n) for n in list_dirs(root)) if s is not None]
    return sorted(
        (s for s in steps if exists(join(layout.step_uri(root, s), layout.COMMITTED))), reverse=True
    )


def resumable(root: str) -> Iterator[str]:
    """URIs of the committed checkpoints under `root` whose manifest and file sizes check out,
    newest first, checked lazily; the others are reported and skipped. Content is verified as it
    is read (by the ranks that read it)."""
    pointed = None
    if exists(join(root, layout.LATEST)):
        pointed = layout.step_of(read_bytes(join(root, layout.LATEST)).decode().strip())
    candidates = committed_steps(root)
    if pointed is not None and pointed not in candidates:
        log.warning(
            "%s points at step %s, which is not committed; ignoring it", join(root, layout.LATEST), pointed
        )
    for step in candidates:
        uri = layout.step_uri(root, step)
        try:
            check_manifest(uri)
        except (CheckpointError, ValueError, KeyError) as e:
            log.warning("skipping checkpoint %s: %s; trying the previous one", uri, e)
            continue
        yield uri


def find_resumable(root: str) -> str | None:
    """URI of the newest checkpoint under `root` that checks out, or None."""
    return next(resumable(root), None)


def resume_candidates(resume: str, root: str) -> Iterator[str]:
    """`none` -> nothing; `auto` -> the good checkpoints under root, newest first (a load that finds
    one corrupt falls back to the next); anything else is one checkpoint directory URI that must
    check out."""
    if resume == "auto":
        yield from resumable(root)
    elif resume != "none":
        check_manifest(resume)
        yield resume


def resolve_checkpoint(path: str) -> str:
    """Accept a step directory, a checkpoint root, or a run directory (uses <run>/checkpoints)."""
    if exists(join(path, layout.COMMITTED)):
        return path
    for root in (path, join(path, "checkpoints")):
        found = find_resumable(root)
        if found:
            return found
    raise CheckpointError(
        f"no committed checkpoint found at {path} (looked for {layout.COMMITTED} in "
        f"{path}, step directories in it and in {join(path, 'checkpoints')})"
    )
