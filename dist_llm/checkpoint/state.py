"""What a checkpoint holds and how a run saves/restores it across ranks.

Every checkpoint has the consolidated model weights (`model.pt`, written by rank 0, so eval and
export work whatever engine trained), the trainer state (step, data state, config), one RNG file
per rank, and the engine's own files (e.g. the optimizer, or per-rank ZeRO shards). Rank 0 commits
once every rank's files are durable.
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.distributed as dist

from dist_llm.checkpoint import layout
from dist_llm.checkpoint.commit import commit, write_parts
from dist_llm.checkpoint.retention import apply_retention
from dist_llm.checkpoint.serialize import from_bytes, to_bytes
from dist_llm.checkpoint.storage import exists, join, read_bytes, remove_tree
from dist_llm.distributed import World, barrier
from dist_llm.engine.base import Engine
from dist_llm.log import get_logger

log = get_logger("checkpoint")


def save_checkpoint(root: str, step: int, engine: Engine, trainer_state: dict[str, Any], world: World,
                    keep_last: int) -> str:
    """Write, commit and apply retention; collective: every rank calls it."""
    step_uri = layout.step_uri(root, step)
    if world.is_main:
        # Leftovers of an earlier crashed save of this step (possibly from more ranks) must not mix
        # with the new files.
        remove_tree(step_uri)
    barrier()
    parts = {layout.rng_name(world.rank): to_bytes(_rng_state()), **engine.checkpoint_parts()}
    weights = engine.consolidated_state_dict()
    if world.is_main:
        parts[layout.MODEL] = to_bytes(weights)
        parts[layout.TRAINER] = json.dumps(trainer_state, indent=1).encode()
    records = write_parts(step_uri, parts)
    gathered: list[dict] = [records]
    if dist.is_initialized():
        gathered = [{} for _ in range(world.size)]
        dist.all_gather_object(gathered, records)
    if world.is_main:
        merged = {name: rec for rank_records in gathered for name, rec in rank_records.items()}
        commit(root, step, merged)
        removed = apply_retention(root, keep_last)
        log.info("checkpoint step %d committed to %s%s", step, step_uri,
                 f" (removed old steps {removed})" if removed else "")
    barrier()
    return step_uri


def load_model_state(step_uri: str, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    return from_bytes(read_bytes(join(step_uri, layout.MODEL)), device)


def load_trainer_state(step_uri: str) -> dict[str, Any]:
    return json.loads(read_bytes(join(step_uri, layout.TRAINER)))


def checkpoint_files(step_uri: str) -> list[str]:
    return sorted(json.loads(read_bytes(join(step_uri, layout.MANIFEST)))["files"])


def load_checkpoint(step_uri: str, engine: Engine, world: World) -> dict[str, Any]:
    """Restore engine state and this rank's RNG; returns the trainer state (step, data, config)."""
    engine.load_checkpoint_parts(lambda name: read_bytes(join(step_uri, name)), checkpoint_files(step_uri))
    # A rank that did not exist in the saved run (resume on more ranks) takes rank 0's stream.
    rng_uri = join(step_uri, layout.rng_name(world.rank))
    if not exists(rng_uri):
        rng_uri = join(step_uri, layout.rng_name(0))
    _set_rng_state(from_bytes(read_bytes(rng_uri)))
    return load_trainer_state(step_uri)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
