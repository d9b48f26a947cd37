"""Exact dedup partitioned by hash: no process holds more than its share of the document hashes.

Keeping every hash of a corpus in one process (16 bytes per document plus a sort) does not scale
to 10^10 documents, so the hash space is cut instead:
1. each work unit writes a keys file: the hash and row of every document it kept, sorted by
   hash, behind an index of where each coarse bucket starts, so one range of hash buckets is one
   range read;
2. merge cuts the 2**16 buckets into pieces of about `piece_keys` hashes (the piece count grows
   with the corpus, not the piece) and parts own contiguous ranges of pieces. A piece reads its
   buckets from every unit in unit order and sorts them stably by hash: the copies of a document
   then sit together in corpus order, and every one after the first is dropped. Its drops (rows
   per unit) go into one file indexed by unit;
3. each unit's shards are rewritten by the part that owns the unit, with its drops gathered from
   every piece (see merge.py).
A document's copies always fall in one bucket, so this finds exactly what one sort of the whole
corpus finds: the first copy in corpus order wins, for any number of pieces, parts or workers.
The price of holding one piece at a time is in requests: every piece reads two small ranges of
every unit's keys, and every unit two of every piece's drops (4 x units x pieces in all, on 16
threads per process), which is what `piece_keys` trades against memory.

A unit's rows count its train documents first, then its validation ones, each in shard order.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from data_prep import store
from dist_llm.errors import DataError
from dist_llm.uri import join

BUCKET_BITS = 16  # a document's bucket: the first 16 bits of its hash
BUCKETS = 1 << BUCKET_BITS
PIECE_KEYS = 1 << 21  # hashes one piece holds at most, give or take the spread of a uniform hash
KEY = np.dtype([("hi", ">u8"), ("lo", ">u8"), ("row", "<u4")])
KEYS_PER_INDEX_ENTRY = 64  # a unit's index has about one entry per this many keys
INDEX = np.dtype("<u4")
MERGE_DIR = "merge"
IO_THREADS = 16  # the reads are small; on object storage latency dominates


def keys_file(digests: list[bytes]) -> tuple[bytes, int]:
    """(file bytes, index bits) of a unit's keys: row i is the unit's i-th document.

    Layout: `2**bits + 1` little-endian uint32, the row count before each coarse bucket (the
    first `bits` bits of the hash), then the keys (hash, row) sorted by hash."""
    raw = np.frombuffer(b"".join(digests), dtype=">u8").reshape(-1, 2)
    keys = np.empty(len(raw), dtype=KEY)
    keys["hi"], keys["lo"], keys["row"] = raw[:, 0], raw[:, 1], np.arange(len(raw))
    keys = keys[np.lexsort((keys["lo"], keys["hi"]))]
    bits = min(BUCKET_BITS, (len(keys) // KEYS_PER_INDEX_ENTRY).bit_length())
    starts = np.arange(1 << bits, dtype=np.uint64) << np.uint64(64 - bits)
    index = np.append(np.searchsorted(keys["hi"], starts), len(keys)).astype(INDEX)
    return index.tobytes() + keys.tobytes(), bits


def piece_count(keys: int, piece_keys: int = PIECE_KEYS) -> int:
    """How many pieces `keys` hashes are cut into: each about `piece_keys`, at most one a bucket."""
    if piece_keys < 1:
        raise DataError(f"--dedup-piece-keys {piece_keys} must be >= 1")
    return min(BUCKETS, max(1, -(-keys // piece_keys)))


def piece_buckets(piece: int, pieces: int) -> tuple[int, int]:
    """Buckets [first, stop) of `piece` out of `pieces`."""
    return piece * BUCKETS // pieces, (piece + 1) * BUCKETS // pieces


def pieces_of_part(pieces: int, num_parts: int, part: int) -> range:
    """The contiguous pieces (a contiguous range of hash buckets) that `part` owns."""
    return range(-(-part * pieces // num_parts), -(-(part + 1) * pieces // num_parts))


def read_keys(out: str, keys: dict, first: int, stop: int) -> np.ndarray:
    """The keys of one unit (its record's `keys` block) in buckets [first, stop): two range reads,
    the index entries spanning the range, then the keys they point to."""
    uri, shift = join(out, keys["path"]), BUCKET_BITS - keys["bits"]
    low, high = first >> shift, -(-stop >> shift)
    span = store.read_range(uri, low * INDEX.itemsize, (high - low + 1) * INDEX.itemsize)
    index = np.frombuffer(span, dtype=INDEX)
    begin, end = int(index[0]), int(index[-1])
    if begin == end:
        return np.empty(0, dtype=KEY)
    base = ((1 << keys["bits"]) + 1) * INDEX.itemsize
    found = np.frombuffer(
        store.read_range(uri, base + begin * KEY.itemsize, (end - begin) * KEY.itemsize), dtype=KEY
    )
    # A coarse index entry may reach past the range: trim to its exact buckets.
    shift = np.uint64(64 - BUCKET_BITS)
    cut = int(np.searchsorted(found["hi"], np.uint64(first) << shift))
    end_at = len(found) if stop == BUCKETS else int(np.searchsorted(found["hi"], np.uint64(stop) << shift))
    return found[cut:end_at]


def later_copies(keys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(unit, row) of every key that repeats an earlier one, sorted by unit then row.

    `keys[u]` are unit u's keys; a stable sort by hash keeps equal hashes in unit order, and
    within a unit in row order, so the first of each run is the first copy in corpus order."""
    joined = np.concatenate(keys) if keys else np.empty(0, dtype=KEY)
    units = np.repeat(np.arange(len(keys), dtype=np.uint32), [len(k) for k in keys])
    order = np.lexsort((joined["lo"], joined["hi"]))
    ordered = joined[order]
    repeat = np.zeros(len(order), dtype=bool)
    repeat[1:] = (ordered["hi"][1:] == ordered["hi"][:-1]) & (ordered["lo"][1:] == ordered["lo"][:-1])
    drop_units, drop_rows = units[order[repeat]], ordered["row"][repeat]
    by_unit = np.lexsort((drop_rows, drop_units))
    return drop_units[by_unit], drop_rows[by_unit]


def drops_uri(out: str, piece: int, pieces: int) -> str:
    return join(out, MERGE_DIR, f"drops-{piece:05d}-of-{pieces:05d}.bin")


def find_piece(out: str, keys: list[dict], train_docs: list[int], piece: int, pieces: int) -> dict:
    """Find the later copies in one piece and write its drops file; returns what the piece
    record needs (the file's sha256 and drop counts per split).

    Drops file: `len(keys) + 1` little-endian uint32, the drop count before each unit, then the
    dropped rows (uint32), by unit then row."""
    first, stop = piece_buckets(piece, pieces)
    with ThreadPoolExecutor(IO_THREADS) as pool:
        found = list(pool.map(lambda k: read_keys(out, k, first, stop), keys))
    units, rows = later_copies(found)
    offsets = np.searchsorted(units, np.arange(len(keys) + 1)).astype(INDEX)
    data = offsets.tobytes() + rows.astype(INDEX).tobytes()
    store.write_bytes(drops_uri(out, piece, pieces), data, durable=False)
    validation = int((rows >= np.asarray(train_docs, dtype=np.int64)[units]).sum()) if len(rows) else 0
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "drops": {"train": len(rows) - validation, "validation": validation},
    }


def unit_drops(out: str, unit: int, units: int, pieces: int) -> np.ndarray:
    """The sorted rows of `unit` (of `units`) that some piece dropped: two range reads a piece."""
    base = (units + 1) * INDEX.itemsize

    def read(piece: int) -> np.ndarray:
        uri = drops_uri(out, piece, pieces)
        span = store.read_range(uri, unit * INDEX.itemsize, 2 * INDEX.itemsize)
        begin, end = (int(v) for v in np.frombuffer(span, dtype=INDEX))
        if begin == end:
            return np.empty(0, dtype=INDEX)
        rows = store.read_range(uri, base + begin * INDEX.itemsize, (end - begin) * INDEX.itemsize)
        return np.frombuffer(rows, dtype=INDEX)

    with ThreadPoolExecutor(IO_THREADS) as pool:
        return np.sort(np.concatenate(list(pool.map(read, range(pieces)))))
