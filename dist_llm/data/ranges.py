"""Token ranges of a remote split, read by byte range: only the chunks a window covers.

A shard's token ids are one buffer at a known offset in its file (`ShardTable.values_offsets`), cut
into chunks of `chunk_bytes` with one check each in the shard's checks file (see
`data_prep.checks`). Reading tokens [a, b) of a shard fetches the chunks holding them (one ranged
GET) and their checks (a second of a few bytes, sent at the same time), verifies every chunk, and
keeps the run of chunks as one entry of the node's `DataCache`, which is what a later read of the
same window, or a read that waited for its prefetch, finds.
"""

from __future__ import annotations

import os

import numpy as np

from data_prep.checks import CHECK_BYTES, checks_path, chunk_checks
from data_prep.manifest import ShardTable
from dist_llm.data.cache import Corrupt, DataCache, Download, cached_name
from dist_llm.errors import DataError
from dist_llm.uri import filesystem, join


class ShardRanges:
    """Reads tokens of the shards of `table` (a split of the dataset at `data_dir`) by range."""

    def __init__(
        self, data_dir: str, table: ShardTable, dtype: np.dtype, chunk_bytes: int, cache: DataCache
    ) -> None:
        if chunk_bytes % dtype.itemsize:
            raise DataError(
                f"{data_dir}: chunk_bytes={chunk_bytes} in the manifest is not a whole number of "
                f"{dtype.name} tokens; re-run `dist-llm prep`"
            )
        self.data_dir = data_dir
        self.table = table
        self.dtype = dtype
        self.chunk_bytes = chunk_bytes
        self.cache = cache
        self._folder = cache.dataset_dir(data_dir)

    def _run(self, shard: int, offset: int, take: int) -> tuple[str, str, int, int, Download]:
        """(shard URI, cache entry, first chunk, entry size, download) of the chunks holding tokens
        [offset, offset + take) of `shard`."""
        width, chunk = self.dtype.itemsize, self.chunk_bytes
        first, last = offset * width // chunk, ((offset + take) * width - 1) // chunk
        values = int(self.table.tokens[shard]) * width
        start, stop = first * chunk, min((last + 1) * chunk, values)
        path, sha256 = self.table.path(shard), self.table.checksums[shard].as_py()
        uri, checks_uri = join(self.data_dir, path), join(self.data_dir, checks_path(path))
        base = int(self.table.values_offsets[shard])

        def download(tmp: str) -> None:
            fs, fs_path = filesystem(uri)
            # One call, so an async store (s3fs) sends both requests at once.
            data, checks = fs.cat_ranges(
                [fs_path, filesystem(checks_uri)[1]],
                [base + start, first * CHECK_BYTES],
                [base + stop, (last + 1) * CHECK_BYTES],
            )
            for got, name in ((data, uri), (checks, checks_uri)):
                if isinstance(got, FileNotFoundError):
                    raise DataError(
                        f"{name}: listed in the dataset manifest but missing from storage; upload "
                        "the whole prepared dataset directory again"
                    )
                if isinstance(got, Exception):
                    raise got
            if len(data) != stop - start or checks != chunk_checks(data, sha256, first, chunk):
                raise Corrupt(
                    f"bytes [{base + start}, {base + stop}) (chunks {first}-{last} of its token ids) "
                    f"do not match their checks in {checks_uri}"
                )
            with open(tmp, "wb") as f:
                f.write(data)

        local = os.path.splitext(cached_name(self._folder, path, sha256.hex()))[0] + f".{first}-{last}.chunks"
        return uri, local, first, stop - start, download

    def prefetch(self, shard: int, offset: int, take: int) -> None:
        """Start fetching what `read(shard, offset, take)` needs."""
        uri, local, _, size, download = self._run(shard, offset, take)
        self.cache.prefetch(uri, local, size, download, shared=False)

    def read(self, shard: int, offset: int, take: int) -> np.ndarray:
        """Tokens [offset, offset + take) of `shard`, in the dataset's dtype."""
        uri, local, first, size, download = self._run(shard, offset, take)
        try:
            data = np.fromfile(self.cache.get(uri, local, size, download, shared=False), self.dtype)
        except FileNotFoundError:  # evicted by another process since it was fetched
            data = np.fromfile(self.cache.get(uri, local, size, download, shared=False), self.dtype)
        skip = offset - first * self.chunk_bytes // self.dtype.itemsize
        return data[skip : skip + take]
