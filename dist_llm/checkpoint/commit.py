"""The commit protocol: all part files, then a manifest with sizes and sha256, then the
COMMITTED marker, then the `latest` pointer. A step directory without its marker is never used,
so a crash at any point leaves the previous committed checkpoint as the newest loadable one.
"""

from __future__ import annotations

import hashlib
import json
import time

from dist_llm.checkpoint import layout
from dist_llm.checkpoint.storage import exists, join, read_bytes, write_bytes
from dist_llm.errors import CheckpointError


def file_record(data: bytes) -> dict[str, object]:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_parts(step_uri: str, parts: dict[str, bytes]) -> dict[str, dict[str, object]]:
    """Write this rank's part files; returns their manifest records."""
    records = {}
    for name, data in parts.items():
        write_bytes(join(step_uri, name), data)
        records[name] = file_record(data)
    return records


def commit(root: str, step: int, records: dict[str, dict[str, object]]) -> None:
    """Called once (rank 0) after every rank's parts are durable."""
    step_uri = layout.step_uri(root, step)
    manifest = {"step": step, "files": records, "created_unix": time.time()}
    write_bytes(join(step_uri, layout.MANIFEST), json.dumps(manifest, indent=1).encode())
    write_bytes(join(step_uri, layout.COMMITTED), b"")
    write_bytes(join(root, layout.LATEST), layout.step_dir_name(step).encode())


def verify(step_uri: str) -> dict[str, object]:
    """Check marker and checksums of a step directory; returns its manifest or raises."""
    if not exists(join(step_uri, layout.COMMITTED)):
        raise CheckpointError(f"{step_uri} has no {layout.COMMITTED} marker (partial checkpoint)")
    manifest_uri = join(step_uri, layout.MANIFEST)
    try:
        manifest = json.loads(read_bytes(manifest_uri))
    except ValueError as e:  # also UnicodeDecodeError from a flipped byte
        raise CheckpointError(f"{manifest_uri}: not valid JSON ({e}) (corrupt checkpoint)") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{manifest_uri}: expected an object with a 'files' object "
                              "(corrupt checkpoint)")
    for name, record in manifest["files"].items():
        data = read_bytes(join(step_uri, name))
        if file_record(data) != record:
            raise CheckpointError(f"{join(step_uri, name)}: size/sha256 do not match the manifest "
                                  "(corrupt checkpoint)")
    return manifest
