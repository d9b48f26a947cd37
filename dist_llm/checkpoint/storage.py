"""Byte-level access to checkpoint locations given as URI strings (local path, s3://, ...).

Locations are `str`, not `Path`: Path would mangle `s3://bucket/key` into `s3:/bucket/key`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid

from dist_llm.errors import CheckpointError, CorruptCheckpointError
from dist_llm.log import get_logger
from dist_llm.uri import filesystem as _fs
from dist_llm.uri import is_local, join, put_object  # noqa: F401  (re-exported: checkpoint code calls storage.join)
from dist_llm.uri import read_range as _read_range

log = get_logger("checkpoint")


def write_bytes(uri: str, data: bytes | list[memoryview], attempts: int = 5, backoff_s: float = 0.5) -> None:
    """Write a whole object (one buffer, or several back to back). Locally through a temp file +
    rename so readers never see half a file; remote stores publish an object only when its
    (multipart) upload completes, and transient failures there (connection reset, store
    restarting) are retried with exponential backoff."""
    if is_local(uri):
        _write_local(uri.removeprefix("file://"), data)
        return
    try:
        put_object(uri, data, attempts, backoff_s, log)
    except Exception as e:  # botocore's connection errors are not OSError
        raise CheckpointError(
            f"cannot write {uri} after {attempts} attempts: {e}; check the endpoint, credentials and bucket"
        ) from e


def _write_local(path: str, data: bytes | list[memoryview]) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            with open(tmp, "wb") as f:
                for buffer in [data] if isinstance(data, bytes) else data:
                    f.write(buffer)
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
        return (
            "free space on that filesystem (or lower checkpoint.keep_last), or point "
            "checkpoint.dir at a larger one"
        )
    if e.errno in (errno.EACCES, errno.EPERM):
        return (
            f"make that directory writable for uid {os.getuid()}, or point checkpoint.dir at a "
            "writable location"
        )
    if e.errno == errno.EROFS:
        return "the filesystem is read-only; point checkpoint.dir at a writable location"
    return "check free space and permissions"


def read_bytes(uri: str) -> bytes:
    fs, path = _fs(uri)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CorruptCheckpointError(f"{uri} does not exist") from None


def read_range(uri: str, offset: int, length: int) -> bytes:
    try:
        return _read_range(uri, offset, length)
    except FileNotFoundError:
        raise CorruptCheckpointError(f"{uri} does not exist") from None


def file_sizes(uri: str) -> dict[str, int]:
    """Size of every file below `uri`, keyed by its path relative to `uri` (one listing call)."""
    fs, path = _fs(uri)
    root = path.rstrip("/") + "/"
    found = fs.find(path, detail=True) if fs.exists(path) else {}
    return {
        name[len(root) :]: int(info["size"])
        for name, info in found.items()
        if info.get("type") == "file" and name.startswith(root)
    }


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
