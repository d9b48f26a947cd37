"""What a checkpoint holds, and restoring a running engine from one (saving is `writer`).

    step-00001000/
      state/rank-00000.distcp ...   torch engine: each rank's shards of model + optimizer (DCP)
      state/.metadata               DCP metadata: every tensor's chunks, where each lives, its sha256
      deepspeed/...                 DeepSpeed engine: its own per-rank partition files instead
      rng-rank00000.pt ...          each rank's RNG state
      trainer.json                  step, data state, config, callback state (rank 0)
      rank-done-00000.json ...      per-rank records, then manifest.json, then COMMITTED

No file holds the whole model: each rank wrote its shards, and on load each rank reads (by byte
range) and verifies only the chunks that overlap its new shards, on any layout and world size.
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from dist_llm.checkpoint import layout
from dist_llm.checkpoint.commit import read_manifest, read_verified
from dist_llm.checkpoint.dcp_storage import RangeReader
from dist_llm.checkpoint.deepspeed_files import restore_files
from dist_llm.checkpoint.serialize import from_bytes
from dist_llm.checkpoint.storage import join, read_range
from dist_llm.distributed import World, all_reduce_sum
from dist_llm.engine.base import Engine
from dist_llm.errors import CheckpointError, CorruptCheckpointError


def load_trainer_state(step_uri: str, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    manifest = manifest or read_manifest(step_uri)
    return json.loads(read_verified(step_uri, manifest, layout.TRAINER))


def load_checkpoint(step_uri: str, engine: Engine, world: World) -> dict[str, Any]:
    """Restore engine state and this rank's RNG; returns the trainer state (step, data, config).

    Collective. Every rank reads the manifest and what it needs; a problem any rank finds raises on
    every rank (CorruptCheckpointError when bytes are bad, so the caller can fall back)."""
    error: CheckpointError | None = None
    try:  # the per-rank reads, agreed on before any collective load starts
        manifest = read_manifest(step_uri)
        files = manifest["files"]
        if engine.checkpoint_format == "dcp" and layout.STATE_METADATA not in files:
            raise CheckpointError(
                f"{step_uri} was not saved by engine.type=torch (no {layout.STATE_METADATA}); "
                "resume it with the engine that saved it"
            )
        metadata = (
            read_verified(step_uri, manifest, layout.STATE_METADATA)
            if engine.checkpoint_format == "dcp"
            else b""
        )
        # A rank that did not exist in the saved run (resume on more ranks) takes rank 0's stream.
        rng = layout.rng_name(world.rank) if layout.rng_name(world.rank) in files else layout.rng_name(0)
        rng_state = from_bytes(read_verified(step_uri, manifest, rng))
        trainer = load_trainer_state(step_uri, manifest)
    except CheckpointError as e:
        error = e
    _agree(error, world)
    if engine.checkpoint_format == "dcp":
        _load_sharded(step_uri, metadata, engine)
    else:
        restore_files(engine.engine, step_uri, manifest)
    set_rng_state(rng_state)
    return trainer


def _agree(error: CheckpointError | None, world: World) -> None:
    """Raise on every rank if any rank failed (corrupt beats other errors: it allows a fallback)."""
    flags = torch.tensor(
        [error is not None, isinstance(error, CorruptCheckpointError)], dtype=torch.int64, device=world.device
    )
    all_reduce_sum(flags)
    if error is not None:
        raise error
    if flags[1] > 0:
        raise CorruptCheckpointError("another rank found the checkpoint corrupt (see its log)")
    if flags[0] > 0:
        raise CheckpointError("another rank could not read the checkpoint (see its log)")


def _load_sharded(step_uri: str, metadata: bytes, engine: Engine) -> None:
    """DCP load into the engine's own sharded state: each rank reads the saved chunks overlapping
    its shards, whatever the layout that saved them."""
    template = engine.state_dict()
    reader = RangeReader(
        metadata, lambda name, offset, length: read_range(join(step_uri, name), offset, length), step_uri
    )
    try:
        dcp.load(template, storage_reader=reader)
    except CheckpointException as e:  # raised on every rank, with every rank's failure
        # Each failure is the exception, or (exception, traceback summary) from a gather.
        causes = [f[0] if isinstance(f, tuple) else f for f in e.failures.values()]
        corrupt = next((f for f in causes if isinstance(f, CorruptCheckpointError)), None)
        if corrupt is not None:
            raise CorruptCheckpointError(str(corrupt)) from None
        raise CheckpointError(
            f"{step_uri}: cannot load into this model ({causes[0]}); resume with the "
            "model config that saved it"
        ) from None
    engine.load_state_dict(template)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
