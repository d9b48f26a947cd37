"""Token shards of one dataset split, seen as one flat token stream.

Shards are Arrow IPC files with one `tokens: list<uint16>` row per document (`list<uint32>` for a
large vocabulary, `list<int32>` in datasets of the earliest manifest format; see data_prep).
Opening a split reads only its columns of the manifest's shard table: the cumulative token offsets
become one numpy array. A local shard is memory-mapped when a read first needs it, its flattened
values a view of the mapping, never a copy, so reading a 100 GB dataset costs page-table entries,
not RAM. At most `max_open` shards stay mapped, the least recently read unmapped first, so a split
of millions of shards stays far below the kernel's per-process limit on mappings
(`vm.max_map_count`, 65,530 by default) and the open-file limit. A broken or missing shard raises
DataError naming the file when it is first read.

A remote split (s3://...) is read by byte range through the node's `DataCache`: a read fetches the
verified chunks holding its tokens (`ShardRanges`), and `prefetch` starts fetching the ranges of
reads to come. Datasets written before range reads have no offsets or checks: their shards are
downloaded whole, verified against the manifest's sha256, and mapped like local ones.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from data_prep.manifest import Manifest, manifest_path, read_manifest, shard_schema
from dist_llm.data.cache import DataCache, cached_name
from dist_llm.data.ranges import ShardRanges
from dist_llm.errors import DataError
from dist_llm.uri import is_local, join


def local_path(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


class Piece(NamedTuple):
    """One shard's part of a token range: `tokens` tokens from `offset` (in tokens) of `shard`."""

    shard: int
    offset: int
    tokens: int


class TokenShards:
    """The concatenated token stream of one split (train/validation) of a prepared dataset.

    `manifest` saves reading it again; remote datasets are read through `cache` (the node's cache
    directory and this process's download pool, one for every split and source; by default an
    unbounded one at the default location); `max_open` bounds the shards mapped at once
    (`data.max_open_shards`).
    """

    def __init__(
        self,
        data_dir: str,
        split: str,
        manifest: Manifest | None = None,
        cache: DataCache | None = None,
        max_open: int = 64,
    ) -> None:
        if max_open < 1:
            raise ValueError(f"max_open={max_open}: at least one shard must stay mapped to read it")
        self.data_dir = data_dir
        self.remote = not is_local(data_dir)
        if self.remote:
            cache = cache or DataCache()
        self.manifest = manifest if manifest is not None else read_manifest(data_dir, cache)
        tables = self.manifest.shards
        if split not in tables or not len(tables[split]):
            raise DataError(
                f"{manifest_path(data_dir)}: split {split!r} has no shards; "
                f"available: {sorted(k for k, v in tables.items() if len(v))}"
            )
        self.split = split
        self.table = tables[split]
        self.fingerprint: str = self.manifest.header["splits"][split]["fingerprint"]
        """Identifies the split's exact data (shard checksums + tokenizer), so a resume can refuse
        other data; recorded in the manifest when it was written."""
        self._schema = shard_schema(self.manifest.token_type)
        self._itemsize = np.dtype(self.manifest.header["token_dtype"]).itemsize
        self._starts = np.zeros(len(self.table) + 1, dtype=np.int64)
        np.cumsum(self.table.tokens, out=self._starts[1:])
        self.num_tokens = int(self._starts[-1])
        self.max_open = max_open
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()
        """Mapped shards by index, least recently read first."""
        self._ranges: ShardRanges | None = None
        if self.remote and self.table.values_offsets is not None:
            dtype = np.dtype(self.manifest.header["token_dtype"])
            self._ranges = ShardRanges(
                data_dir, self.table, dtype, self.manifest.header["chunk_bytes"], cache
            )
        elif self.remote:
            self._cache = cache
            self._cache_dir = cache.dataset_dir(data_dir)

    def _uri(self, index: int) -> str:
        return join(self.data_dir, self.table.path(index))

    def _whole_shard(self, index: int) -> tuple[str, str, str, int]:
        """(URI, cache entry, sha256, bytes) of a shard that is downloaded whole."""
        path, sha256 = self.table.path(index), self.table.sha256(index)
        return (
            self._uri(index),
            cached_name(self._cache_dir, path, sha256),
            sha256,
            int(self.table.bytes[index]),
        )

    def _array(self, index: int) -> np.ndarray:
        """Shard `index` mapped, unmapping the least recently read one past `max_open`."""
        array = self._open.get(index)
        if array is not None:
            self._open.move_to_end(index)
            return array
        if self.remote:
            uri, label, sha256, size = self._whole_shard(index)
            source = self._cache.map_file(uri, label, sha256, size)
        else:
            source = label = local_path(self._uri(index))
        array = self._open[index] = self._map(source, label, int(self.table.tokens[index]), self._schema)
        while len(self._open) > self.max_open:
            # The mapping goes with its last reference: reads copy out and keep none.
            self._open.popitem(last=False)
        return array

    def shards_of(self, start: int, length: int) -> range:
        """Indices of the shards holding tokens [start, start+length)."""
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        last = int(np.searchsorted(self._starts, start + length - 1, side="right")) - 1
        return range(first, last + 1)

    def pieces(self, start: int, length: int) -> list[Piece]:
        """Each shard's part of tokens [start, start+length): what `read` reads and `prefetch`
        fetches, computed from the index alone (no shard is opened)."""
        stop, pieces = start + length, []
        for shard in self.shards_of(start, length):
            first, end = int(self._starts[shard]), int(self._starts[shard + 1])
            pieces.append(Piece(shard, max(start, first) - first, min(stop, end) - max(start, first)))
        return pieces

    def byte_range(self, piece: Piece) -> tuple[int, int] | None:
        """Where a piece's token ids lie in its shard file, [first byte, end); None in datasets
        of formats without `values_offset` (read as whole shards)."""
        if self.table.values_offsets is None:
            return None
        first = int(self.table.values_offsets[piece.shard]) + piece.offset * self._itemsize
        return first, first + piece.tokens * self._itemsize

    def prefetch(self, start: int, length: int) -> None:
        """Start fetching what `read(start, length)` needs (remote datasets; a no-op locally)."""
        if not self.remote:
            return
        for shard, offset, take in self.pieces(start, length):
            if self._ranges is not None:
                self._ranges.prefetch(shard, offset, take)
            elif shard not in self._open:
                self._cache.prefetch_file(*self._whole_shard(shard))

    @staticmethod
    def _map(
        source: str | pa.MemoryMappedFile, label: str, expected_tokens: int, schema: pa.Schema
    ) -> np.ndarray:
        # A corrupt footer/schema can surface as any Arrow error (or a missing column) at any of
        # these calls, not only when opening, so all of them sit inside the try.
        try:
            mapped = pa.memory_map(source, "r") if isinstance(source, str) else source
            table = pa.ipc.open_file(mapped).read_all()
            if not table.schema.equals(schema):
                raise DataError(
                    f"{label}: schema is {table.schema.to_string()!r}, expected "
                    f"{schema.to_string()!r} as the manifest says; re-run `dist-llm prep` for this dataset"
                )
            chunks = table.column("tokens").chunks
            # Prep writes one record batch per shard: its values are a view of the mapping.
            # Combining batches would copy the whole shard into memory, so only a file with
            # several (not written by prep) pays for that.
            column = chunks[0] if len(chunks) == 1 else table.column("tokens").combine_chunks()
            values = column.flatten().to_numpy(zero_copy_only=True)
        except (OSError, pa.ArrowException, UnicodeDecodeError) as e:
            raise DataError(
                f"{label}: cannot read shard ({e}); re-run `dist-llm prep` for this dataset"
            ) from None
        if len(values) != expected_tokens:
            raise DataError(
                f"{label}: holds {len(values)} tokens but the manifest says {expected_tokens}; "
                "the shard is stale or corrupt, re-run `dist-llm prep`"
            )
        return values

    def read(self, start: int, length: int, out: np.ndarray | None = None) -> np.ndarray:
        """Tokens [start, start+length) of the flat stream as int64, stitched across shard
        boundaries; written into `out` when given (e.g. a row of a batch)."""
        if start < 0 or start + length > self.num_tokens:
            raise IndexError(f"token range [{start}, {start + length}) outside [0, {self.num_tokens})")
        if out is None:
            out = np.empty(length, dtype=np.int64)
        filled = 0
        for shard, offset, take in self.pieces(start, length):
            if self._ranges is not None:
                out[filled : filled + take] = self._ranges.read(shard, offset, take)
            else:
                out[filled : filled + take] = self._array(shard)[offset : offset + take]
            filled += take
        return out
