"""Locations given as URI strings: a local path, `file://...`, `s3://bucket/key`, ...

Locations are `str`, not `Path`: Path would mangle `s3://bucket/key` into `s3:/bucket/key`.
Shared by data prep (inputs, shards), the training data loader and checkpoints.
"""

from __future__ import annotations

import hashlib
import logging
import time

import fsspec
from fsspec.core import url_to_fs


def join(root: str, *parts: str) -> str:
    """`root/part/...` with exactly one slash between parts (works for paths and URIs)."""
    return "/".join([root.rstrip("/"), *parts])


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for `uri` and the path inside it."""
    return url_to_fs(uri)


SINGLE_PUT_BYTES = 64 * 2**20
"""Remote objects up to this size go up in one call; larger ones stream as a multipart upload."""
PART_BYTES = 64 * 2**20
"""Size of each part of a multipart upload (S3 allows 5 MiB to 5 GiB, and 10,000 parts)."""


def payload_size(data: bytes | list[memoryview]) -> int:
    return len(data) if isinstance(data, bytes) else sum(b.nbytes for b in data)


def put_object(
    uri: str, data: bytes | list[memoryview], attempts: int, backoff_s: float, log: logging.Logger
) -> None:
    """Upload a whole object to a remote store, retrying transient failures (connection reset, store
    restarting) with exponential backoff; the last failure is re-raised for the caller to explain."""
    fs, path = filesystem(uri)
    for attempt in range(1, attempts + 1):
        try:
            _put(fs, path, data)
            return
        except Exception as e:  # botocore's connection errors are not OSError
            if attempt == attempts:
                raise
            delay = backoff_s * 2 ** (attempt - 1)
            log.warning("writing %s failed (%s); retry %d/%d in %.1fs", uri, e, attempt, attempts - 1, delay)
            time.sleep(delay)
            fs.invalidate_cache()


def _put(fs: fsspec.AbstractFileSystem, path: str, data: bytes | list[memoryview]) -> None:
    if isinstance(data, bytes) or payload_size(data) <= SINGLE_PUT_BYTES:
        # One call with the whole buffer: s3fs then sends a single PUT instead of streaming
        # sequential parts through a file object.
        fs.pipe_file(path, data if isinstance(data, bytes) else b"".join(data))
        return
    # A shard of a large model: the store assembles the parts, so no process joins them in memory.
    # The object appears only when the upload completes (close); a failure aborts it.
    with fs.open(path, "wb", block_size=PART_BYTES) as f:
        for buffer in data:
            f.write(buffer)


def read_range(uri: str, offset: int, length: int) -> bytes:
    """`length` bytes of an object from `offset`: a ranged GET on object stores."""
    fs, path = filesystem(uri)
    return fs.cat_file(path, start=offset, end=offset + length)


_CHUNK = 8 * 2**20


def download(uri: str, path: str) -> tuple[int, str]:
    """Stream `uri` into the local file `path`, hashing on the way; returns (bytes, sha256)."""
    fs, remote = filesystem(uri)
    digest = hashlib.sha256()
    count = 0
    with fs.open(remote, "rb") as src, open(path, "wb") as dst:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            count += len(chunk)
    return count, digest.hexdigest()
