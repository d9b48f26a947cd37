"""Byte-level access to checkpoint locations given as URI strings (local path, s3://, ...).

Locations are `str`, not `Path`: Path would mangle `s3://bucket/key` into `s3:/bucket/key`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
import uuid

import fsspec
from fsspec.core import url_to_fs

from dist_llm.errors import CheckpointError
from dist_llm.log import get_logger

log = get_logger("checkpoint")


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return url_to_fs(uri)


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def write_bytes(uri: str, data: bytes, attempts: int = 5, backoff_s: float = 0.5) -> None:
    """Write a whole object. Locally through a temp file + rename so readers never see half a file;
    remote stores publish an object only when its (multipart) upload completes, and transient
    failures there (connection reset, store restarting) are retried with exponential backoff."""
    if is_local(uri):
        _write_local(uri.removeprefix("file://"), data)
        return
    fs, path = _fs(uri)
    for attempt in range(1, attempts + 1):
        try:
            # One call with the whole buffer: s3fs then sends a single PUT (or concurrent parts
            # for big objects) instead of streaming sequential 50 MB parts through a file object.
            fs.pipe_file(path, data)
            return
        except Exception as e:  # botocore's connection errors are not OSError
            if attempt == attempts:
                raise CheckpointError(f"cannot write {uri} after {attempts} attempts: {e}; check the "
                                      "endpoint, credentials and bucket") from e
            delay = backoff_s * 2 ** (attempt - 1)
            log.warning("writing %s failed (%s); retry %d/%d in %.1fs", uri, e, attempt, attempts - 1, delay)
            time.sleep(delay)
            fs.invalidate_cache()


def _write_local(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):  # a failed write must not leave temp files behind
                os.remove(tmp)
            raise
    except OSError as e:  # disk full / permission denied do not heal by retrying
        raise CheckpointError(f"cannot write {path}: {e}; {_local_fix(e)}") from e


def _local_fix(e: OSError) -> str:
    """The fix for a failed local write, by cause: the errno says which one applies."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return ("free space on that filesystem (or lower checkpoint.keep_last), or point "
                "checkpoint.dir at a larger one")
    if e.errno in (errno.EACCES, errno.EPERM):
        return (f"make that directory writable for uid {os.getuid()}, or point checkpoint.dir at a "
                "writable location")
    if e.errno == errno.EROFS:
        return "the filesystem is read-only; point checkpoint.dir at a writable location"
    return "check free space and permissions"


def read_bytes(uri: str) -> bytes:
    fs, path = _fs(uri)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{uri} does not exist") from None


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.exists(path)


def list_dirs(uri: str) -> list[str]:
    """Names (not paths) of the entries directly under `uri`; empty if it does not exist."""
    fs, path = _fs(uri)
    if not fs.exists(path):
        return []
    return sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def remove_tree(uri: str) -> None:
    fs, path = _fs(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)
