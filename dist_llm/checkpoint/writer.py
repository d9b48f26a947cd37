"""Checkpoint saving that does not stall training.

`save()` (collective, main thread) copies this rank's shards to host memory (pinned on CUDA) — the
only part the training loop waits for — and hands the copy to one background thread. There DCP plans
the save over a process group of its own (so its collectives never interleave with training's),
lays this rank's items out as one file without copying them, and the thread uploads that file and
runs the commit protocol. Ranks coordinate the commit through the storage itself (each rank writes
a `rank-done` note after its files; rank 0 commits when all notes exist).
"""

from __future__ import annotations

import datetime
import json
import threading
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._state_dict_stager import StateDictStager

from dist_llm.checkpoint import layout
from dist_llm.checkpoint.commit import commit, write_parts
from dist_llm.checkpoint.dcp_storage import MemoryWriter
from dist_llm.checkpoint.deepspeed_files import snapshot_files
from dist_llm.checkpoint.retention import apply_retention
from dist_llm.checkpoint.serialize import to_bytes
from dist_llm.checkpoint.state import rng_state
from dist_llm.checkpoint.storage import exists, join, read_bytes, remove_tree, write_bytes
from dist_llm.config import CheckpointConfig
from dist_llm.distributed import World, all_reduce_sum
from dist_llm.engine.base import Engine
from dist_llm.errors import CheckpointError
from dist_llm.log import get_logger

log = get_logger("checkpoint")


def layout_shards(staged: dict[str, Any], group: dist.ProcessGroup | None) -> dict[str, Any]:
    """This rank's DCP file (a list of buffers viewing the staged tensors) and, on the coordinator,
    DCP's metadata; `group` plans the save across ranks (None: this process alone)."""
    writer = MemoryWriter(layout.state_file)
    dcp.save(staged, storage_writer=writer, process_group=group, no_dist=group is None)
    files: dict[str, Any] = {writer.file: writer.buffers}
    if writer.metadata is not None:
        files[layout.STATE_METADATA] = writer.metadata
    return files


class CheckpointWriter:
    """At most one checkpoint in flight; `wait()` before exit so the last one lands."""

    def __init__(self, root: str, cfg: CheckpointConfig, world: World) -> None:
        self.root = root
        self.cfg = cfg
        self.world = world
        self._thread: threading.Thread | None = None
        self.failed_steps: list[int] = []
        self.committed_steps: list[int] = []
        # DCP's planning collectives run in the background thread, on a group of their own.
        self.group = (
            dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=cfg.commit_timeout_s))
            if dist.is_initialized() and world.size > 1
            else None
        )
        # On CUDA the staging buffers are pinned and reused from save to save; on CPU a copy per save,
        # freed once it is uploaded.
        self._stager = (
            StateDictStager(pin_memory=True, share_memory=False) if torch.cuda.is_available() else None
        )

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def save(self, step: int, engine: Engine, trainer_state: dict[str, Any]) -> float | None:
        """Snapshot and start writing checkpoint `step`; returns seconds the caller was blocked,
        or None if it was skipped: the previous one is still in flight (on_busy=skip), or the
        store cannot be prepared for it (then it is also in `failed_steps`)."""
        start = time.perf_counter()
        # Every rank must take the same decision, so "busy" is agreed on collectively.
        any_busy = all_reduce_sum(torch.tensor([int(self.busy)], device=self.world.device)).item() > 0
        if any_busy and self.cfg.on_busy == "skip":
            log.warning(
                "checkpoint for step %d skipped: the previous one is still uploading "
                "(checkpoint.on_busy=skip)",
                step,
            )
            return None
        self.wait()
        step_uri = layout.step_uri(self.root, step)
        if not self._clear_leftovers(step, step_uri):
            return None
        # The copy is all the training loop waits for: planning, layout and upload come later.
        parts: dict[str, Any] = {layout.rng_name(self.world.rank): to_bytes(rng_state())}
        if self.world.is_main:
            parts[layout.TRAINER] = json.dumps(trainer_state, indent=1).encode()
        staged = None
        if engine.checkpoint_format == "dcp":
            stager = self._stager or StateDictStager(pin_memory=False, share_memory=False)
            staged = stager.stage(engine.state_dict(), non_blocking=False)
        else:  # DeepSpeed writes its own partition files (collective), then they are bytes here
            parts.update(snapshot_files(engine.engine))
        if self.cfg.async_save:
            self._thread = threading.Thread(
                target=self._write_and_commit,
                args=(step, parts, staged),
                name=f"checkpoint-{step}",
                daemon=True,
            )
            self._thread.start()
        else:
            self._write_and_commit(step, parts, staged)
        return time.perf_counter() - start

    def _clear_leftovers(self, step: int, step_uri: str) -> bool:
        """Rank 0 removes files of an earlier crashed save of this step (stale rank-done notes
        must not mix in), and every rank learns whether that worked before any writes: the
        all-reduce is also the barrier. An unreachable store fails this checkpoint, not training."""
        failed = 0
        if self.world.is_main:
            try:
                remove_tree(step_uri)
            except Exception as e:  # botocore's errors are not OSError; the store may be down
                log.error(
                    "checkpoint step %d failed, not committed: cannot clear %s (%s); training "
                    "continues and the previous committed checkpoint remains the resume point",
                    step,
                    step_uri,
                    e,
                )
                failed = 1
        if all_reduce_sum(torch.tensor([failed], device=self.world.device)).item() > 0:
            self.failed_steps.append(step)
            return False
        return True

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _write_and_commit(self, step: int, parts: dict[str, Any], staged: dict[str, Any] | None) -> None:
        step_uri = layout.step_uri(self.root, step)
        try:
            if staged is not None:
                parts.update(layout_shards(staged, self.group))
            records = write_parts(step_uri, parts)
            write_bytes(join(step_uri, layout.rank_done_name(self.world.rank)), json.dumps(records).encode())
            if self.world.is_main:
                merged = self._gather_records(step_uri)
                commit(self.root, step, merged)
                removed = apply_retention(
                    self.root, self.cfg.keep_last, in_flight=step, keep_every=self.cfg.keep_every
                )
                log.info(
                    "checkpoint step %d committed to %s%s",
                    step,
                    step_uri,
                    f" (removed old steps {removed})" if removed else "",
                )
                self.committed_steps.append(step)
        except Exception as e:  # a failed checkpoint must not kill the run; the last good one stays
            self.failed_steps.append(step)
            log.error(
                "checkpoint step %d failed, not committed (%s); training continues and the previous "
                "committed checkpoint remains the resume point",
                step,
                e,
            )

    def _gather_records(self, step_uri: str) -> dict[str, dict[str, object]]:
        deadline = time.monotonic() + self.cfg.commit_timeout_s
        merged: dict[str, dict[str, object]] = {}
        for rank in range(self.world.size):
            note = join(step_uri, layout.rank_done_name(rank))
            while not exists(note):
                if time.monotonic() > deadline:
                    raise CheckpointError(
                        f"rank {rank} did not finish writing {step_uri} within "
                        f"checkpoint.commit_timeout_s={self.cfg.commit_timeout_s}"
                    )
                time.sleep(0.05)
            merged.update(json.loads(read_bytes(note)))
        return merged
