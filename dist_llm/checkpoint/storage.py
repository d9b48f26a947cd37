"""Byte-level access to checkpoint locations given as URI strings (local path, s3://, ...).

Locations are `str`, not `Path`: Path would mangle `s3://bucket/key` into `s3:/bucket/key`.
"""

from __future__ import annotations

import contextlib
import os
import uuid

import fsspec
from fsspec.core import url_to_fs

from dist_llm.errors import CheckpointError


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return url_to_fs(uri)


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object. Locally through a temp file + rename so readers never see half a file."""
    try:
        if is_local(uri):
            path = uri.removeprefix("file://")
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
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
        else:
            fs, path = _fs(uri)
            with fs.open(path, "wb") as f:  # object stores publish an object only when complete
                f.write(data)
    except OSError as e:
        raise CheckpointError(f"cannot write {uri}: {e}; check free space and permissions") from e


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
