"""Arrow IPC shard writer and the train/validation split rule.

Shard layout: `<out>/<split>/shard-NNNNN.arrow`, an Arrow IPC *file* (random access, can be
memory-mapped by the loader) with exactly one column `tokens: list<int32>`, one row per
document. A shard closes once it holds >= `shard_tokens` tokens; documents are never split, so
a shard may exceed the target by one document. Each shard is written as `NAME.tmp` and renamed.

Split rule: a document goes to validation when blake2b(text) / 2**64 < val_fraction, which is
stable across runs, machines, worker counts and Python hash seeds. If val_fraction > 0 but no
document hashed into validation, the *last* train document is moved there (needs >= 2
documents), so a small corpus still gets a validation split. val_fraction == 0 means none.
"""

from __future__ import annotations

import glob
import hashlib
import os

import numpy as np
import pyarrow as pa

from data_prep.atomic import TMP_SUFFIX, publish
from data_prep.tokenizer import file_sha256
from dist_llm.errors import DataError

SPLITS = ("train", "validation")
SCHEMA = pa.schema([pa.field("tokens", pa.list_(pa.int32()))])
SHARD_PATTERN = "shard-{index:05d}.arrow"
MAX_SHARD_TOKENS = 2**30  # list<int32> offsets must stay below 2**31 even with one huge document


def is_validation(text: str, val_fraction: float) -> bool:
    """Stable split decision from the document text alone."""
    if val_fraction <= 0:
        return False
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < val_fraction


def clear_shards(out_dir: str) -> None:
    """Delete shards and temp files from an earlier run so none can be mistaken for current."""
    for split in SPLITS:
        for pattern in ("shard-*.arrow", "*" + TMP_SUFFIX):
            for path in glob.glob(os.path.join(out_dir, split, pattern)):
                os.remove(path)


class ShardWriter:
    """Buffers documents of one split and writes a shard whenever the token target is reached."""

    def __init__(self, out_dir: str, split: str, shard_tokens: int) -> None:
        if not 0 < shard_tokens <= MAX_SHARD_TOKENS:
            raise DataError(f"--shard-tokens {shard_tokens} must be in 1..{MAX_SHARD_TOKENS}")
        self.out_dir, self.split, self.shard_tokens = out_dir, split, shard_tokens
        self.shards: list[dict] = []
        self._buffer: list[np.ndarray] = []
        self._buffered_tokens = 0
        self.docs_added = 0
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)

    def add(self, tokens: np.ndarray) -> None:
        self._buffer.append(tokens)
        self._buffered_tokens += len(tokens)
        self.docs_added += 1
        if self._buffered_tokens >= self.shard_tokens:
            self._flush()

    def close(self) -> dict:
        """Write the last partial shard and return this split's manifest block."""
        if self._buffer:
            self._flush()
        return {
            "docs": sum(s["docs"] for s in self.shards),
            "tokens": sum(s["tokens"] for s in self.shards),
            "shards": self.shards,
        }

    def _flush(self) -> None:
        if self._buffered_tokens >= 2**31:
            raise DataError(
                f"{self.split} shard {len(self.shards)}: one document has {self._buffered_tokens} "
                "tokens, more than int32 list offsets allow; split such documents (--text-split)"
            )
        rel_path = f"{self.split}/{SHARD_PATTERN.format(index=len(self.shards))}"
        path = os.path.join(self.out_dir, rel_path)
        offsets = np.zeros(len(self._buffer) + 1, dtype=np.int32)
        np.cumsum([len(doc) for doc in self._buffer], out=offsets[1:])
        column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(self._buffer)))
        batch = pa.record_batch([column], schema=SCHEMA)
        with pa.OSFile(path + TMP_SUFFIX, "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as ipc:
            ipc.write_batch(batch)
        publish(path + TMP_SUFFIX, path)
        self.shards.append({
            "path": rel_path,
            "docs": len(self._buffer),
            "tokens": self._buffered_tokens,
            "bytes": os.path.getsize(path),
            "sha256": file_sha256(path),
        })
        self._buffer, self._buffered_tokens = [], 0


class SplitWriter:
    """Routes documents to the train or validation `ShardWriter` and applies the split rule."""

    def __init__(self, out_dir: str, shard_tokens: int, val_fraction: float) -> None:
        if not 0 <= val_fraction < 1:
            raise DataError(f"--val-fraction {val_fraction} must be in [0, 1)")
        self.val_fraction = val_fraction
        self.writers = {split: ShardWriter(out_dir, split, shard_tokens) for split in SPLITS}
        self._held_train: np.ndarray | None = None  # latest train doc, kept back for the rule
        self._val_docs = 0

    def add(self, tokens: np.ndarray, validation: bool) -> None:
        if validation:
            self.writers["validation"].add(tokens)
            self._val_docs += 1
            return
        if self._held_train is not None:
            self.writers["train"].add(self._held_train)
        self._held_train = tokens

    def close(self) -> dict:
        """Finish both splits; returns the manifest's `splits` block."""
        held = self._held_train
        if held is not None:
            has_other_train = self.writers["train"].docs_added > 0
            move = self.val_fraction > 0 and self._val_docs == 0 and has_other_train
            self.writers["validation" if move else "train"].add(held)
        return {split: writer.close() for split, writer in self.writers.items()}
