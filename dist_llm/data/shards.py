"""Memory-mapped token shards of one dataset split, seen as one flat token stream.

Shards are Arrow IPC files with one `tokens: list<int32>` row per document (see data_prep).
Their flattened value buffers are mapped, never copied, so opening a 100 GB dataset costs
page-table entries, not RAM.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pyarrow as pa

from data_prep.manifest import read_manifest
from dist_llm.errors import DataError

_TOKENS_TYPE = pa.list_(pa.int32())


class TokenShards:
    """The concatenated token stream of one split (train/validation) of a prepared dataset."""

    def __init__(self, data_dir: str, split: str) -> None:
        self.data_dir = data_dir
        self.manifest = read_manifest(data_dir)
        splits = self.manifest["splits"]
        if split not in splits or not splits[split]["shards"]:
            raise DataError(f"{os.path.join(data_dir, 'manifest.json')}: split {split!r} has no shards; "
                            f"available: {sorted(k for k, v in splits.items() if v['shards'])}")
        self.split = split
        self._arrays: list[np.ndarray] = []
        for shard in splits[split]["shards"]:
            self._arrays.append(self._map(os.path.join(data_dir, shard["path"]), shard["tokens"]))
        sizes = np.array([len(a) for a in self._arrays], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(sizes)])
        self.num_tokens = int(self._starts[-1])

    @staticmethod
    def _map(path: str, expected_tokens: int) -> np.ndarray:
        # A corrupt footer/schema can surface as any Arrow error (or a missing column) at any of
        # these calls, not only when opening, so all of them sit inside the try.
        try:
            reader = pa.ipc.open_file(pa.memory_map(path, "r"))
            table = reader.read_all()
            if table.schema.names != ["tokens"] or table.schema.field("tokens").type != _TOKENS_TYPE:
                raise DataError(f"{path}: schema is {table.schema.to_string()!r}, expected one column "
                                f"'tokens: {_TOKENS_TYPE}'; re-run `dist-llm prep` for this dataset")
            column = table.column("tokens").combine_chunks()
            values = column.flatten().to_numpy(zero_copy_only=True)
        except (OSError, pa.ArrowException, UnicodeDecodeError) as e:
            raise DataError(f"{path}: cannot read shard ({e}); "
                            "re-run `dist-llm prep` for this dataset") from None
        if len(values) != expected_tokens:
            raise DataError(f"{path}: holds {len(values)} tokens but the manifest says {expected_tokens}; "
                            "the shard is stale or corrupt, re-run `dist-llm prep`")
        return values

    @property
    def fingerprint(self) -> str:
        """Identifies the exact data (shard checksums + tokenizer), so a resume can refuse other data."""
        h = hashlib.sha256(self.manifest["tokenizer"]["sha256"].encode())
        for shard in self.manifest["splits"][self.split]["shards"]:
            h.update(shard["sha256"].encode())
        return h.hexdigest()[:16]

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start+length) of the flat stream, stitched across shard boundaries."""
        if start < 0 or start + length > self.num_tokens:
            raise IndexError(f"token range [{start}, {start + length}) outside [0, {self.num_tokens})")
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        out = np.empty(length, dtype=np.int64)
        filled = 0
        shard = first
        while filled < length:
            offset = start + filled - int(self._starts[shard])
            take = min(length - filled, len(self._arrays[shard]) - offset)
            out[filled:filled + take] = self._arrays[shard][offset:offset + take]
            filled += take
            shard += 1
        return out
