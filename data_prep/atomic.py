"""Atomic file writes: write `NAME.tmp`, fsync, then `os.replace` onto the final name.

Why: a reader (the training data loader, a resumed prep) must never see a half-written shard,
manifest or cache file; `os.replace` is atomic on POSIX and Windows within one filesystem.
"""

from __future__ import annotations

import os

TMP_SUFFIX = ".tmp"


def publish(tmp_path: str, final_path: str, durable: bool = True) -> None:
    """Atomically move `tmp_path` onto `final_path`, flushing it to disk first if `durable`."""
    if durable:
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp_path, final_path)


def atomic_write_text(path: str, text: str) -> None:
    """Write `text` (UTF-8) to `path` so readers see either the old file or the whole new one."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str, data: bytes, durable: bool = True) -> None:
    """Binary twin of `atomic_write_text`."""
    tmp = path + TMP_SUFFIX
    with open(tmp, "wb") as fh:
        fh.write(data)
    publish(tmp, path, durable)
