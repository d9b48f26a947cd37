"""The commit protocol: all part files, then a manifest with sizes and sha256, then the
COMMITTED marker, then the `latest` pointer. A step directory without its marker is never used,
so a crash at any point leaves the previous committed checkpoint as the newest loadable one.

Checking a checkpoint is split so that no process reads all of it: `check_manifest` (one process,
before choosing) reads the manifest and lists the directory, so a missing or truncated file is
caught without reading it; the content is verified by whoever reads it (`read_verified` for whole
files, the DCP reader per tensor chunk).
"""

from __future__ import annotations

import hashlib
import json
import time

from dist_llm.checkpoint import layout
from dist_llm.checkpoint.storage import exists, file_sizes, join, read_bytes, write_bytes
from dist_llm.errors import CheckpointError, CorruptCheckpointError


def file_record(data: bytes | list[memoryview]) -> dict[str, object]:
    digest, size = hashlib.sha256(), 0
    for buffer in [data] if isinstance(data, bytes) else data:
        digest.update(buffer)
        size += memoryview(buffer).nbytes
    return {"bytes": size, "sha256": digest.hexdigest()}


def write_parts(step_uri: str, parts: dict[str, bytes | list[memoryview]]) -> dict[str, dict[str, object]]:
    """Write this rank's part files; returns their manifest records."""
    records = {}
    for name, data in parts.items():
        records[name] = file_record(data)
        write_bytes(join(step_uri, name), data)
    return records


def commit(root: str, step: int, records: dict[str, dict[str, object]]) -> None:
    """Called once (rank 0) after every rank's parts are durable."""
    seal(layout.step_uri(root, step), records, step=step)
    write_bytes(join(root, layout.LATEST), layout.step_dir_name(step).encode())


def seal(uri: str, records: dict[str, dict[str, object]], **fields: object) -> None:
    """Make a directory whose files are all durable readable: its manifest, then its marker."""
    manifest = {**fields, "files": records, "created_unix": time.time()}
    write_bytes(join(uri, layout.MANIFEST), json.dumps(manifest, indent=1).encode())
    write_bytes(join(uri, layout.COMMITTED), b"")


def read_manifest(step_uri: str) -> dict[str, object]:
    """The manifest of a committed step directory, or CheckpointError saying what is wrong."""
    if not exists(join(step_uri, layout.COMMITTED)):
        raise CorruptCheckpointError(f"{step_uri} has no {layout.COMMITTED} marker (partial checkpoint)")
    manifest_uri = join(step_uri, layout.MANIFEST)
    try:
        manifest = json.loads(read_bytes(manifest_uri))
    except ValueError as e:  # also UnicodeDecodeError from a flipped byte
        raise CorruptCheckpointError(f"{manifest_uri}: not valid JSON ({e}) (corrupt checkpoint)") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CorruptCheckpointError(
            f"{manifest_uri}: expected an object with a 'files' object (corrupt checkpoint)"
        )
    return manifest


def check_manifest(step_uri: str) -> dict[str, object]:
    """The manifest, after checking that every file it lists exists with its recorded size: one
    listing, no file read, so choosing a checkpoint costs the same for 5M and 70B parameters."""
    manifest = read_manifest(step_uri)
    sizes = file_sizes(step_uri)
    for name, record in manifest["files"].items():
        if name not in sizes:
            raise CorruptCheckpointError(f"{join(step_uri, name)} is listed in the manifest but missing")
        if sizes[name] != record.get("bytes"):
            raise CorruptCheckpointError(
                f"{join(step_uri, name)}: {sizes[name]} bytes, the manifest says "
                f"{record.get('bytes')} (truncated or corrupt checkpoint)"
            )
    return manifest


def read_verified(step_uri: str, manifest: dict[str, object], name: str) -> bytes:
    """A whole file of the checkpoint, checked against its manifest record."""
    record = manifest["files"].get(name)
    if record is None:
        raise CheckpointError(f"{join(step_uri, name)} is not in the checkpoint's manifest")
    data = read_bytes(join(step_uri, name))
    if file_record(data) != record:
        raise CorruptCheckpointError(
            f"{join(step_uri, name)}: size/sha256 do not match the manifest (corrupt checkpoint)"
        )
    return data
