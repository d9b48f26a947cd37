"""Arrow IPC shards of one work unit, plus the document hashes merge needs for corpus-wide dedup.

Shard layout: `<out>/units/u-NNNNNN/<split>-KKK.arrow`, an Arrow IPC *file* (random access, can
be memory-mapped by the loader) with exactly one column `tokens: list<uint16>` (`list<uint32>`
for a vocabulary over 65,536 entries, see `manifest.token_dtype`), one row per document. A shard
closes once it holds >= `shard_tokens` tokens; documents are never split, so a shard may exceed
the target by one document. Next to each shard, `<split>-KKK.checks` holds the checks that let a
reader verify byte ranges of its token ids (see `checks`), and `<split>-KKK.hashes` the 16-byte
hash of each row's document, in row order.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from data_prep import store
from data_prep.checks import CHUNK_BYTES, checks_path, chunk_checks, values_span
from data_prep.filters import HASH_BYTES
from data_prep.manifest import shard_schema
from dist_llm.errors import DataError
from dist_llm.uri import join

SPLITS = ("train", "validation")
MAX_SHARD_TOKENS = 2**30  # int32 list offsets must stay below 2**31 even with one huge document
UNITS_DIR = "units"


def unit_dir(index: int) -> str:
    """Path of unit `index`'s directory, relative to the output root."""
    return f"{UNITS_DIR}/u-{index:06d}"


def shard_bytes(values: np.ndarray, lengths: np.ndarray) -> bytes:
    """One Arrow IPC file whose `tokens` rows are `values` (token ids, in the dataset's dtype) cut
    into `lengths` pieces."""
    if len(values) >= 2**31:
        raise DataError(
            f"a shard would hold {len(values)} tokens, more than int32 list offsets allow; "
            "lower --shard-tokens or --max-chars, or split such documents (--text-split)"
        )
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    schema = shard_schema(column.type.value_type)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, schema) as ipc:
        ipc.write_batch(pa.record_batch([column], schema=schema))
    return sink.getvalue().to_pybytes()


def write_shard(out: str, rel_path: str, data: bytes) -> dict:
    """Write a shard file's bytes and then its checks; returns what the shard table and the unit
    record need to know about the two files (besides docs and tokens)."""
    sha256 = hashlib.sha256(data).digest()
    offset, length = values_span(data)
    checks = chunk_checks(memoryview(data)[offset : offset + length], sha256, 0, CHUNK_BYTES)
    checks_rel = checks_path(rel_path)
    store.write_bytes(join(out, checks_rel), checks, durable=False)
    store.write_bytes(join(out, rel_path), data, durable=False)
    return {
        "path": rel_path,
        "bytes": len(data),
        "sha256": sha256.hex(),
        "values_offset": offset,
        "checks": checks_rel,
        "checks_sha256": hashlib.sha256(checks).hexdigest(),
    }


def publish_shard(out: str, rel_path: str, values: np.ndarray, lengths: np.ndarray, hashes: bytes) -> dict:
    """Write one shard, its checks and its hashes file; returns the shard's record (paths relative
    to `out`)."""
    hashes_rel = rel_path.removesuffix(".arrow") + ".hashes"
    # Hashes and checks first: a shard under its final name always has both next to it. No fsync
    # per file: the unit record holds every checksum and a resume verifies them (see store).
    store.write_bytes(join(out, hashes_rel), hashes, durable=False)
    return {
        "path": rel_path,
        "docs": len(lengths),
        "tokens": len(values),
        **write_shard(out, rel_path, shard_bytes(values, lengths)),
        "hashes": hashes_rel,
        "hashes_sha256": hashlib.sha256(hashes).hexdigest(),
    }


class UnitShardWriter:
    """Buffers one split's documents of one unit and writes a shard whenever the target is hit.

    Documents arrive in batches as one flat token array plus per-document lengths: per-document
    arrays would cost a noticeable share of the tokenizer's own time.
    """

    def __init__(self, out: str, unit_index: int, split: str, shard_tokens: int) -> None:
        if not 0 < shard_tokens <= MAX_SHARD_TOKENS:
            raise DataError(f"--shard-tokens {shard_tokens} must be in 1..{MAX_SHARD_TOKENS}")
        self.out, self.split, self.shard_tokens = out, split, shard_tokens
        self.prefix = f"{unit_dir(unit_index)}/{split}"
        self.shards: list[dict] = []
        self._values: list[np.ndarray] = []
        self._lengths: list[np.ndarray] = []
        self._hashes: list[bytes] = []
        self._tokens = 0

    def add(self, values: np.ndarray, lengths: np.ndarray, digests: list[bytes]) -> None:
        """Append documents (`values` cut into `lengths`, one digest each), in order."""
        assert len(lengths) == len(digests) and all(len(d) == HASH_BYTES for d in digests)
        while len(lengths):
            ends = np.cumsum(lengths)
            # The shard closes with the document that reaches the target.
            take = int(np.searchsorted(ends, self.shard_tokens - self._tokens)) + 1
            take = min(take, len(lengths))
            used = int(ends[take - 1])
            self._values.append(values[:used])
            self._lengths.append(lengths[:take])
            self._hashes.extend(digests[:take])
            self._tokens += used
            values, lengths, digests = values[used:], lengths[take:], digests[take:]
            if self._tokens >= self.shard_tokens:
                self._flush()

    def close(self) -> dict:
        """Write the last partial shard; returns this split's block of the unit record."""
        if self._hashes:
            self._flush()
        return {
            "docs": sum(s["docs"] for s in self.shards),
            "tokens": sum(s["tokens"] for s in self.shards),
            "shards": self.shards,
        }

    def _flush(self) -> None:
        rel = f"{self.prefix}-{len(self.shards):03d}.arrow"
        self.shards.append(
            publish_shard(
                self.out,
                rel,
                np.concatenate(self._values),
                np.concatenate(self._lengths),
                b"".join(self._hashes),
            )
        )
        self._values, self._lengths, self._hashes, self._tokens = [], [], [], 0
