"""Locations given as URI strings: a local path, `file://...`, `s3://bucket/key`, ...

Locations are `str`, not `Path`: Path would mangle `s3://bucket/key` into `s3:/bucket/key`.
Shared by data prep (inputs, shards), the training data loader and checkpoints.
"""

from __future__ import annotations

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


def put_object(uri: str, data: bytes, attempts: int, backoff_s: float, log: logging.Logger) -> None:
    """Upload a whole object to a remote store, retrying transient failures (connection reset, store
    restarting) with exponential backoff; the last failure is re-raised for the caller to explain."""
    fs, path = filesystem(uri)
    for attempt in range(1, attempts + 1):
        try:
            # One call with the whole buffer: s3fs then sends a single PUT (or concurrent parts
            # for big objects) instead of streaming sequential 50 MB parts through a file object.
            fs.pipe_file(path, data)
            return
        except Exception as e:  # botocore's connection errors are not OSError
            if attempt == attempts:
                raise
            delay = backoff_s * 2 ** (attempt - 1)
            log.warning("writing %s failed (%s); retry %d/%d in %.1fs", uri, e, attempt, attempts - 1, delay)
            time.sleep(delay)
            fs.invalidate_cache()
