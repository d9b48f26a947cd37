"""What a checkpoint holds, and loading it back (saving is `dist_llm.checkpoint.writer`).

Every checkpoint has the consolidated model weights (`model.pt`, written by rank 0, so eval and
export work whatever engine trained), the trainer state (step, data state, config), one RNG file
per rank, and the engine's own files (e.g. the optimizer, or per-rank ZeRO shards).
"""

from __future__ import annotations

import json
from typing import Any

import torch

from dist_llm.checkpoint import layout
from dist_llm.checkpoint.serialize import from_bytes
from dist_llm.checkpoint.storage import exists, join, read_bytes
from dist_llm.distributed import World
from dist_llm.engine.base import Engine


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
    set_rng_state(from_bytes(read_bytes(rng_uri)))
    return load_trainer_state(step_uri)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
