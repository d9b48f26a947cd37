"""DeepSpeed's checkpoint files carried inside our checkpoints, and restored from them.

DeepSpeed writes its checkpoint to a directory (per rank: its ZeRO partition of the optimizer and,
at stage 3, of the weights; rank 0 also the module states). Our checkpoints are stored through
fsspec URIs with a commit protocol, so each rank reads the files it wrote into bytes named
`deepspeed/<file>` (DeepSpeed's names carry the rank, so ranks never collide) and, to restore,
writes them back into a local temporary directory for `engine.load_checkpoint`.

A checkpoint saved on a different number of data-parallel ranks cannot be loaded directly (ZeRO
partitions depend on the rank count); it is converted with DeepSpeed's universal checkpoint
(`ds_to_universal`) and loaded through `load_universal`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import tempfile
from typing import Any, Callable

import torch.distributed as dist

from dist_llm.checkpoint.layout import DEEPSPEED as PREFIX
from dist_llm.errors import CheckpointError
from dist_llm.log import get_logger

log = get_logger("deepspeed")

TAG = "state"  # DeepSpeed's checkpoint tag; our step directories already tell checkpoints apart
_OPTIM_FILE = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")


def snapshot_files(engine: Any) -> dict[str, bytes]:
    """Every file this rank's `save_checkpoint` writes, as `deepspeed/<relpath>` -> bytes."""
    with tempfile.TemporaryDirectory(prefix="dist_llm_ds_save_") as tmp:
        engine.save_checkpoint(tmp, tag=TAG, save_latest=False)
        parts: dict[str, bytes] = {}
        tag_dir = os.path.join(tmp, TAG)
        for root, _, files in os.walk(tag_dir):
            for name in files:
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    parts[PREFIX + os.path.relpath(path, tag_dir)] = f.read()
        return parts


def saved_dp_size(names: list[str]) -> int:
    """Data-parallel ranks of the run that saved: one optimizer partition file per rank."""
    ranks = [int(m.group(1)) for n in names if (m := _OPTIM_FILE.search(n))]
    if not ranks:
        raise CheckpointError(
            "the checkpoint holds no DeepSpeed optimizer partitions (zero_pp_rank_*_"
            "optim_states.pt); it was not saved by engine.type=deepspeed with ZeRO >= 1"
        )
    return max(ranks) + 1


def restore_files(engine: Any, read: Callable[[str], bytes], names: list[str]) -> None:
    """Restore a DeepSpeed engine from the `deepspeed/...` files of one of our checkpoints."""
    if not names:
        raise CheckpointError(
            "the checkpoint has no deepspeed/ files: it was not saved by "
            "engine.type=deepspeed; resume it with the engine that saved it"
        )
    saved = saved_dp_size(names) if engine.zero_optimization() else dist.get_world_size()
    with tempfile.TemporaryDirectory(prefix="dist_llm_ds_load_") as tmp:
        tag_dir = os.path.join(tmp, TAG)
        # ZeRO-1/2 read every rank's partition file (to check the partitioning), so write them all.
        for name in names:
            path = os.path.join(tag_dir, name[len(PREFIX) :])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(read(name))
        if saved == dist.get_world_size():
            _load(engine, tmp, TAG)
            return
        log.info(
            "DeepSpeed checkpoint saved on %d data-parallel ranks, now %d: converting it to a "
            "universal checkpoint",
            saved,
            dist.get_world_size(),
        )
        universal = os.path.join(tmp, "universal")
        _to_universal(tag_dir, os.path.join(universal, TAG))
        # load_universal is read from the config at load time; it only applies to this load.
        engine._config.load_universal_checkpoint = True
        try:
            _load(engine, universal, TAG)
        finally:
            engine._config.load_universal_checkpoint = False


def _load(engine: Any, load_dir: str, tag: str) -> None:
    # The LR schedule is ours (set every step), so there is no scheduler state to restore.
    path, _ = engine.load_checkpoint(
        load_dir, tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False
    )
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load its checkpoint files (tag {tag!r}) from {load_dir}")


def _to_universal(tag_dir: str, out_dir: str) -> None:
    from deepspeed.checkpoint.ds_to_universal import main

    args = argparse.Namespace(
        input_folder=tag_dir,
        output_folder=out_dir,
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # the converter narrates every step with print
        main(args)
