"""`torch.distributed.checkpoint` (DCP) storage that fits our commit protocol.

DCP plans a sharded save (which rank writes which chunk of which tensor, replicated tensors once)
and a resharding load (which saved chunks overlap each rank's shards on any layout); this module is
only where the bytes go:

- `MemoryWriter` lays this rank's items out as one file without copying them (views of the staged
  tensors), records each item's offset, length, dtype, shape and sha256 in DCP's metadata, and
  leaves the upload to the checkpoint writer, which owns the commit protocol.
- `RangeReader` reads each needed item by byte range from any storage URI and checks its sha256
  before DCP copies it into this rank's shards: every rank verifies exactly what it reads, so no
  process ever reads (or hashes) the whole checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.distributed.checkpoint import LoadPlan, LoadPlanner, Metadata, SavePlan, SavePlanner
from torch.distributed.checkpoint.planner import LoadItemType, WriteItemType
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from dist_llm.errors import CheckpointError, CorruptCheckpointError

# One process saving or loading alone is normal here (one-rank runs, offline tools), not a mistake.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


@dataclass(frozen=True)
class StoredItem:
    """Where one saved item (a tensor chunk or a pickled object) lives in a step directory."""

    file: str
    """Name inside the step directory."""
    offset: int
    length: int
    sha256: str
    dtype: str | None = None
    """Tensor items: the torch dtype name (raw little-endian bytes, row-major); None for objects."""
    shape: tuple[int, ...] | None = None


def _raw_bytes(t: torch.Tensor) -> memoryview:
    """The tensor's bytes without a copy (after `contiguous`, which copies only strided views)."""
    flat = t.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def item_tensor(data: bytes | bytearray, item: StoredItem) -> torch.Tensor:
    """A tensor item read back (sharing `data`'s memory)."""
    raw = torch.frombuffer(data if isinstance(data, bytearray) else bytearray(data), dtype=torch.uint8)
    return raw.view(getattr(torch, item.dtype)).reshape(item.shape)


class MemoryWriter(StorageWriter):
    """One file per rank, kept as a list of buffers for the uploader; the coordinator also keeps the
    pickled DCP metadata. `file_name(i)` names rank i's file (its index among the saving ranks)."""

    def __init__(self, file_name: Callable[[int], str]) -> None:
        super().__init__()
        self.file_name = file_name
        self.buffers: list[memoryview] = []
        self.file: str | None = None
        self.metadata: bytes | None = None

    def reset(self, checkpoint_id: Any = None) -> None:
        self.buffers, self.file, self.metadata = [], None, None

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        pass

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        return [dataclasses.replace(plan, storage_data=self.file_name(i)) for i, plan in enumerate(plans)]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        self.file = plan.storage_data
        results, offset = [], 0
        for item in plan.items:
            data = planner.resolve_data(item)
            if item.type == WriteItemType.BYTE_IO:
                buf, dtype, shape = data.getbuffer(), None, None
            else:
                buf, dtype, shape = (
                    _raw_bytes(data),
                    str(data.dtype).removeprefix("torch."),
                    tuple(data.shape),
                )
            stored = StoredItem(self.file, offset, buf.nbytes, hashlib.sha256(buf).hexdigest(), dtype, shape)
            results.append(WriteResult(index=item.index, size_in_bytes=buf.nbytes, storage_data=stored))
            self.buffers.append(buf)
            offset += buf.nbytes
        future: Future[list[WriteResult]] = Future()
        future.set_result(results)
        return future

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        metadata.storage_data = {r.index: r.storage_data for rank in results for r in rank}
        self.metadata = pickle.dumps(metadata)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return True


ReadRange = Callable[[str, int, int], bytes]
"""(file name in the step directory, offset, length) -> bytes."""


class RangeReader(StorageReader):
    """Reads the items a rank needs by range, verifying each one's sha256 before it is used."""

    def __init__(self, metadata: bytes, read_range: ReadRange, where: str) -> None:
        super().__init__()
        self._metadata = metadata
        self.read_range = read_range
        self.where = where
        self.items: dict[Any, StoredItem] = {}

    def reset(self, checkpoint_id: Any = None) -> None:
        pass

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:
            raise CheckpointError(f"{self.where}: no per-rank DCP metadata")  # DCP's fallback probe
        return pickle.loads(self._metadata)

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        self.items = metadata.storage_data

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_item(self, index: Any) -> tuple[StoredItem, bytearray]:
        item = self.items[index]
        data = bytearray(self.read_range(item.file, item.offset, item.length))
        if len(data) != item.length or hashlib.sha256(data).hexdigest() != item.sha256:
            raise CorruptCheckpointError(
                f"{self.where}/{item.file}: bytes {item.offset}-{item.offset + item.length} "
                f"({index.fqn}) do not match their sha256 (corrupt checkpoint)"
            )
        return item, data

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        # In file order, one stored item at a time: peak memory is about the largest tensor chunk.
        by_position = sorted(
            plan.items, key=lambda r: (self.items[r.storage_index].file, self.items[r.storage_index].offset)
        )
        cached: tuple[Any, StoredItem, bytearray] | None = None
        for request in by_position:
            if cached is None or cached[0] != request.storage_index:
                cached = (request.storage_index, *self.read_item(request.storage_index))
            _, item, data = cached
            if request.type == LoadItemType.BYTE_IO:
                planner.load_bytes(request, io.BytesIO(data))
                continue
            source = item_tensor(data, item)
            for dim, (start, length) in enumerate(zip(request.storage_offsets, request.lengths)):
                source = source.narrow(dim, start, length)
            target = planner.resolve_tensor(request).detach()
            target.copy_(source)
            planner.commit_tensor(request, target)
        future: Future[None] = Future()
        future.set_result(None)
        return future

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return True
