"""Per-chunk checks of a shard's token ids: what lets a reader verify a byte range of a shard
without downloading the whole file.

A shard's token ids are one contiguous buffer inside its Arrow file (the values of its one record
batch's list column), `values_offset` bytes into the file; the shard table records that offset, so
a reader knows where token i lies without reading the file's footer. The buffer is cut into chunks
of `chunk_bytes` (the manifest header records it), and `<shard stem>.checks`, written next to the
shard, holds one little-endian uint32 per chunk: the CRC-32 of the chunk, started from a value
derived from the shard's sha256 and the chunk's index. A reader fetches the chunks a window covers
plus their checks (two small ranges) and recomputes them, so a flipped byte, bytes from another
offset, and a shard replaced since the manifest was written (another sha256) all fail.

CHUNK_BYTES trades the bytes fetched per window (whole chunks) against the size of the checks:
a 257-token uint16 window (514 bytes) covers about 5 chunks of 128 bytes, so it fetches about
640 bytes plus 20 bytes of checks (1.3x the window); the checks add 3% to the stored token bytes.
"""

from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa

CHUNK_BYTES = 128
CHECK_BYTES = 4
_STEP = 0x9E3779B1
"""Odd, so the start values of a shard's chunks are all distinct modulo 2**32."""


def checks_path(shard_path: str) -> str:
    """Where the checks of the shard at `shard_path` are stored (same directory, same stem)."""
    return shard_path.removesuffix(".arrow") + ".checks"


def chunk_checks(values: bytes | memoryview, sha256: bytes, first: int, chunk_bytes: int) -> bytes:
    """The checks of `values`, which are chunks `first`, `first + 1`, ... of the token ids of the
    shard whose file has this sha256 (32 raw bytes); the last chunk may be short."""
    view = memoryview(values)
    indices = first + np.arange(-(-len(view) // chunk_bytes), dtype=np.uint64)
    starts = ((int.from_bytes(sha256[:4], "little") + indices * _STEP) & 0xFFFFFFFF).tolist()
    crc32 = zlib.crc32
    checks = [
        crc32(view[i : i + chunk_bytes], start) for i, start in zip(range(0, len(view), chunk_bytes), starts)
    ]
    return np.array(checks, dtype="<u4").tobytes()


def values_span(data: bytes) -> tuple[int, int]:
    """(offset, length) in bytes of the token ids inside a shard file's bytes, read back from the
    file as written, so the offset is whatever the Arrow writer chose."""
    buffer = pa.py_buffer(data)
    reader = pa.ipc.open_file(buffer)
    if reader.num_record_batches != 1:
        raise ValueError(f"a shard has one record batch, this one {reader.num_record_batches}")
    values = reader.get_batch(0).column(0).flatten()
    width = values.type.byte_width
    start = values.buffers()[1].address - buffer.address + values.offset * width
    return start, len(values) * width
