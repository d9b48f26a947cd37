"""Delete old committed checkpoints beyond `keep_last` (plus every `keep_every`-th step, kept for
good: the long-horizon history people evaluate later); the newest committed one always survives."""

from __future__ import annotations

from dist_llm.checkpoint import layout
from dist_llm.checkpoint.discovery import committed_steps
from dist_llm.checkpoint.storage import list_dirs, remove_tree


def apply_retention(
    root: str, keep_last: int, in_flight: int | None = None, keep_every: int = 0
) -> list[int]:
    """Remove committed steps older than the newest `keep_last` that are not a multiple of
    `keep_every` (0 = none kept that way), plus uncommitted leftovers older than the newest commit
    (never `in_flight`). Returns the removed steps."""
    committed = committed_steps(root)
    if not committed:
        return []
    keep = set(committed[: max(keep_last, 1)])
    if keep_every:
        keep |= {s for s in committed if s % keep_every == 0}
    newest = committed[0]
    removed = []
    for name in list_dirs(root):
        step = layout.step_of(name)
        if step is None or step in keep or step == in_flight:
            continue
        if step in committed or step < newest:
            remove_tree(layout.step_uri(root, step))
            removed.append(step)
    return sorted(removed)
