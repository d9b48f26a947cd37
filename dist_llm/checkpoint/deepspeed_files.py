"""DeepSpeed's checkpoint files carried inside our checkpoints, and restored from them.

Save: each rank's `save_checkpoint` writes its own files (its ZeRO partition of the optimizer and,
at stage 3, of the weights; below stage 3 rank 0 also writes the module, which every rank holds
whole anyway) into a local temporary directory. They are memory-mapped and uploaded as
`deepspeed/<file>` (DeepSpeed's names carry the rank, so ranks never collide): a partition is
streamed from disk, never copied into memory.

Load on as many data-parallel ranks as saved: each rank downloads only the files DeepSpeed reads for
it (its optimizer partition and the module states, its own at stage 3), verified against the
manifest, and `engine.load_checkpoint` reads them.

Load on another number of ranks: ZeRO partitions depend on the rank count, so the checkpoint is
converted once, by rank 0 alone, to DeepSpeed's universal format (one file per parameter and state)
and stored beside it as `universal/` with its own manifest and COMMITTED marker, so a later restart
reuses it. The other ranks wait for the marker by polling the store, not in a collective whose
timeout the conversion time (it grows with the model) could exceed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import mmap
import os
import re
import shutil
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist

from dist_llm.checkpoint import layout
from dist_llm.checkpoint.commit import read_manifest, seal, write_parts
from dist_llm.checkpoint.layout import DEEPSPEED as PREFIX
from dist_llm.checkpoint.storage import exists, join, read_bytes, remove_tree, write_bytes
from dist_llm.errors import CheckpointError, CorruptCheckpointError
from dist_llm.log import get_logger
from dist_llm.uri import download

log = get_logger("deepspeed")

TAG = "state"  # DeepSpeed's checkpoint tag; our step directories already tell checkpoints apart
UNIVERSAL = "universal"  # the converted checkpoint, a committed directory inside the step directory
FAILED = "FAILED"  # written by rank 0 when the conversion fails, with the reason
_OPTIM_FILE = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")
_PARTITIONED_MODULE_FILE = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_model_states\.pt$")
_MODULE_FILE = re.compile(r"^mp_rank_\d+_model_states\.pt$")
_SWAPPED_OPTIMIZER = re.compile(r"(?:^|/)offloaded_tensors/rank(\d+)/")  # NVMe optimizer offload


def snapshot_files(engine: Any) -> dict[str, list[memoryview]]:
    """Every file this rank's `save_checkpoint` writes, as `deepspeed/<relpath>` -> its bytes,
    memory-mapped from a local temporary file (unlinked at once: the mapping keeps it readable
    until the upload drops it)."""
    tmp = tempfile.mkdtemp(prefix="dist_llm_ds_save_")
    try:
        engine.save_checkpoint(tmp, tag=TAG, save_latest=False)
        return {PREFIX + rel: _map(path) for rel, path in _walk(os.path.join(tmp, TAG))}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _walk(folder: str) -> list[tuple[str, str]]:
    """(path relative to `folder`, path) of every file below `folder`."""
    found = []
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            found.append((os.path.relpath(path, folder), path))
    return sorted(found)


def _map(path: str) -> list[memoryview]:
    if os.path.getsize(path) == 0:
        return [memoryview(b"")]  # mmap refuses empty files
    with open(path, "rb") as f:
        return [memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))]


def saved_dp_size(names: list[str]) -> int:
    """Data-parallel ranks of the run that saved: one optimizer partition file per rank."""
    ranks = [int(m.group(1)) for n in names if (m := _OPTIM_FILE.search(n))]
    if not ranks:
        raise CheckpointError(
            "the checkpoint holds no DeepSpeed optimizer partitions (zero_pp_rank_*_"
            "optim_states.pt); it was not saved by engine.type=deepspeed with ZeRO >= 1"
        )
    return max(ranks) + 1


def read_by(name: str, rank: int) -> bool:
    """Whether DeepSpeed's `load_checkpoint` on data-parallel rank `rank` reads file `name`."""
    base = name.rsplit("/", 1)[-1]
    own = _SWAPPED_OPTIMIZER.search(name) or _OPTIM_FILE.search(base) or _PARTITIONED_MODULE_FILE.search(base)
    return (own is not None and int(own.group(1)) == rank) or _MODULE_FILE.match(base) is not None


def restore_files(engine: Any, step_uri: str, manifest: dict[str, Any]) -> None:
    """Restore a DeepSpeed engine from the `deepspeed/...` files of one of our checkpoints."""
    names = sorted(n for n in manifest["files"] if n.startswith(PREFIX))
    if not names:
        raise CheckpointError(
            "the checkpoint has no deepspeed/ files: it was not saved by "
            "engine.type=deepspeed; resume it with the engine that saved it"
        )
    rank, world = dist.get_rank(), dist.get_world_size()
    saved = saved_dp_size(names) if engine.zero_optimization() else world
    with tempfile.TemporaryDirectory(prefix="dist_llm_ds_load_") as tmp:
        tag_dir = os.path.join(tmp, TAG)
        if saved == world:
            _fetch(step_uri, manifest, [n for n in names if read_by(n, rank)], tag_dir, PREFIX)
            _load(engine, tmp)
            return
        log.info(
            "DeepSpeed checkpoint saved on %d data-parallel ranks, now %d: loading it through "
            "its universal conversion",
            saved,
            world,
        )
        universal_uri = join(step_uri, UNIVERSAL)
        universal = _universal(step_uri, manifest, names, rank, engine.device)
        _fetch(universal_uri, universal, list(universal["files"]), tag_dir, "")
        # load_universal is read from the config at load time; it only applies to this load.
        engine._config.load_universal_checkpoint = True
        try:
            _load(engine, tmp)
        finally:
            engine._config.load_universal_checkpoint = False


def _fetch(uri: str, manifest: dict[str, Any], names: list[str], folder: str, prefix: str) -> None:
    """Download the named files of a committed directory into `folder` (minus `prefix`), each
    checked against its manifest record on the way."""
    for name in names:
        path = os.path.join(folder, name[len(prefix) :])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        size, sha256 = download(join(uri, name), path)
        if {"bytes": size, "sha256": sha256} != manifest["files"][name]:
            raise CorruptCheckpointError(
                f"{join(uri, name)}: size/sha256 do not match the manifest (corrupt checkpoint)"
            )


def _universal(
    step_uri: str, manifest: dict[str, Any], names: list[str], rank: int, device: torch.device
) -> dict[str, Any]:
    """The manifest of the checkpoint's universal conversion, converting it first (rank 0) if no
    earlier resume did."""
    uri = join(step_uri, UNIVERSAL)
    done = exists(join(uri, layout.COMMITTED))
    if rank == 0 and not done:
        remove_tree(uri)  # a conversion that crashed half-way, or failed: start clean
    # Agreed before anyone polls, so no rank mistakes an old failure marker for this attempt's.
    flag = torch.tensor([int(done)], device=device)
    dist.broadcast(flag, src=0)
    if not flag.item():
        if rank == 0:
            try:
                _convert(step_uri, manifest, names, uri)
            except Exception as e:
                write_bytes(join(uri, FAILED), str(e).encode())
                raise CheckpointError(f"converting {step_uri} to a universal checkpoint failed: {e}") from e
        else:
            _wait_for(uri)
    return read_manifest(uri)


def _convert(step_uri: str, manifest: dict[str, Any], names: list[str], uri: str) -> None:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dist_llm_ds_universal_") as tmp:
        source, out = os.path.join(tmp, "source"), os.path.join(tmp, "universal")
        _fetch(step_uri, manifest, names, source, PREFIX)  # every rank's files, in this process only
        _to_universal(source, out)
        records = write_parts(uri, {rel: _map(path) for rel, path in _walk(out)})
    seal(uri, records)
    log.info("converted %s to a universal checkpoint in %.1fs", step_uri, time.perf_counter() - start)


def _wait_for(uri: str) -> None:
    while not exists(join(uri, layout.COMMITTED)):
        if exists(join(uri, FAILED)):
            reason = read_bytes(join(uri, FAILED)).decode(errors="replace")
            raise CheckpointError(f"rank 0 could not convert the checkpoint to universal: {reason}")
        time.sleep(0.5)


def _load(engine: Any, load_dir: str) -> None:
    # Hyperparameters come from the config (the LR schedule is set every step), not the checkpoint:
    # DeepSpeed's ZeRO-3 universal load copies group 0's onto every group, decaying the norm gains.
    hyperparameters = [{k: v for k, v in g.items() if k != "params"} for g in engine.optimizer.param_groups]
    path, _ = engine.load_checkpoint(
        load_dir, tag=TAG, load_optimizer_states=True, load_lr_scheduler_states=False
    )
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load its checkpoint files (tag {TAG!r}) from {load_dir}")
    for group, kept in zip(engine.optimizer.param_groups, hyperparameters, strict=True):
        group.update(kept)
    # The ZeRO-3 universal load also gives every partition the same step-count tensor, which each
    # group's update would then advance: one count per partition, as saved.
    for state in getattr(engine.optimizer, "optimizer", engine.optimizer).state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


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
