"""Prep output I/O for a local directory or an object-store prefix (`s3://bucket/prefix`).

Every object is written whole: locally as `NAME.tmp` + fsync + rename, remotely with one PUT
(an object appears only once its upload completes). So a crash never leaves a half-written
shard or record under its final name, and readers (a resumed prep, merge, the training loader)
can trust what they find once its sha256 matches the record that lists it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

from data_prep.atomic import atomic_write_bytes
from dist_llm.errors import DataError
from dist_llm.log import get_logger
from dist_llm.uri import filesystem, is_local, put_object
from dist_llm.uri import read_range as _read_range

log = get_logger("data_prep.store")
ATTEMPTS = 5


def _local(uri: str) -> str:
    return uri.removeprefix("file://")


def check_reachable(uri: str) -> None:
    """Fail fast, with the fix, when an object-store output cannot be used: unreachable endpoint,
    bad credentials or a missing bucket (instead of a botocore traceback after the real work)."""
    if is_local(uri):
        return
    fs, path = filesystem(uri)
    bucket = path.split("/", 1)[0]
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "the default AWS endpoint")
    try:
        found = fs.exists(bucket)
    except Exception as e:  # botocore's connection and auth errors are not OSError
        raise DataError(
            f"{uri}: cannot reach the object store at {endpoint} ({e}); check "
            "AWS_ENDPOINT_URL, the credentials (AWS_ACCESS_KEY_ID/...) and the network"
        ) from None
    if not found:
        raise DataError(f"{uri}: bucket {bucket!r} does not exist at {endpoint}; create it first")


def write_bytes(uri: str, data: bytes, durable: bool = True) -> None:
    """Publish `data` at `uri` atomically; transient remote failures are retried with backoff.

    `durable=False` skips the local fsync: for files whose checksum is recorded elsewhere and
    verified before reuse (shards, hash files, unit records), where a power loss costs a redo,
    not corrupt data; `sync_local` flushes them all at once before the manifest is written."""
    if is_local(uri):
        path = _local(uri)
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            atomic_write_bytes(path, data, durable)
        except OSError as e:
            raise DataError(f"cannot write {path}: {e}; check free space and permissions of --out") from e
        return
    try:
        put_object(uri, data, ATTEMPTS, 0.5, log)
    except Exception as e:  # botocore's connection errors are not OSError
        raise DataError(
            f"cannot write {uri} after {ATTEMPTS} attempts: {e}; check the "
            "endpoint (AWS_ENDPOINT_URL), credentials and bucket"
        ) from e


def write_json(uri: str, obj: dict, durable: bool = True) -> None:
    write_bytes(uri, (json.dumps(obj, indent=1) + "\n").encode(), durable)


def sync_local(uri: str) -> None:
    """Flush everything written without fsync to disk (one sync instead of one per file)."""
    if is_local(uri):
        os.sync()


def read_bytes(uri: str) -> bytes | None:
    """The object's bytes, or None if it does not exist."""
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def read_range(uri: str, offset: int, length: int) -> bytes:
    """`length` bytes of the object from `offset` (one ranged GET on object stores)."""
    try:
        data = _read_range(uri, offset, length)
    except FileNotFoundError:
        data = b""
    if len(data) != length:
        raise DataError(
            f"{uri}: missing or shorter than its record says (bytes {offset}..{offset + length}); "
            "re-run the prep command (it redoes units whose files fail their checksum), then merge"
        )
    return data


def read_json(uri: str) -> dict | None:
    """A JSON object written by `write_json`, or None if missing or unreadable (a partial
    record from an older crash counts as missing: the unit it describes is simply redone)."""
    data = read_bytes(uri)
    if data is None:
        return None
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def sha256(uri: str) -> str | None:
    """sha256 of the object, streamed in 4 MiB chunks; None if it does not exist."""
    fs, path = filesystem(uri)
    digest = hashlib.sha256()
    try:
        with fs.open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(4 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


def remove_prefix(uri: str) -> None:
    """Delete everything under `uri` (used by --force); missing is fine."""
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def remove(uri: str) -> None:
    fs, path = filesystem(uri)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


def local_copy(uri: str) -> str:
    """A local path for the file or directory at `uri`: itself if local, else a temp download."""
    if is_local(uri):
        return _local(uri)
    fs, path = filesystem(uri)
    local = os.path.join(tempfile.mkdtemp(prefix="dist_llm_"), os.path.basename(path.rstrip("/")))
    fs.get(path, local, recursive=fs.isdir(path))
    return local
