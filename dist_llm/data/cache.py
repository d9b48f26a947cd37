"""Local cache of remote shards: download once, verify against the manifest, then memory-map.

Layout: `<root>/<sha256(dataset URI)[:16]>/<shard path>` with the shard's sha256 prefix put into
the file name (`train/shard-00000.3f2a9c1e0b4d5a67.arrow`), so a dataset re-prepared under the same
URI never reuses a stale copy; `uri.txt` in each dataset directory says which URI it mirrors.

A shard appears under its final name only after its sha256 matched (temp file + rename), so a file
that exists is complete. Ranks on one node share the cache: an exclusive `flock` per shard makes one
process download while the others wait and then find the finished file. `flock` is node-local, so
the cache must live on a node-local disk, not on a shared network file system.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from dist_llm.errors import DataError
from dist_llm.log import get_logger
from dist_llm.uri import filesystem

log = get_logger("data")

ATTEMPTS = 3
"""Downloads of one shard before giving up (network errors and checksum mismatches alike)."""
_CHUNK = 8 << 20


def default_cache_root() -> str:
    """$XDG_CACHE_HOME/dist_llm/data, else ~/.cache/dist_llm/data."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dist_llm", "data")


def dataset_cache_dir(root: str, uri: str) -> str:
    """The cache directory of one dataset URI under `root` ("" = the default root), created with
    a `uri.txt` naming the URI, so a person cleaning the cache knows what each directory holds."""
    uri = uri.rstrip("/")
    folder = os.path.join(
        os.path.expanduser(root) or default_cache_root(), hashlib.sha256(uri.encode()).hexdigest()[:16]
    )
    label = os.path.join(folder, "uri.txt")
    if not os.path.exists(label):
        os.makedirs(folder, exist_ok=True)
        tmp = f"{label}.tmp-{os.getpid()}-{threading.get_ident()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(uri + "\n")
        os.replace(tmp, label)
    return folder


def cached_name(cache_dir: str, rel_path: str, sha256: str) -> str:
    """Where shard `rel_path` (as listed in the manifest) with this checksum lives in the cache."""
    stem, ext = os.path.splitext(rel_path)
    path = os.path.normpath(os.path.join(cache_dir, f"{stem}.{sha256[:16]}{ext}"))
    if not path.startswith(os.path.normpath(cache_dir) + os.sep):
        raise DataError(
            f"shard path {rel_path!r} in the manifest leaves the dataset directory; "
            "shard paths must be relative, without '..'"
        )
    return path


class ShardCache:
    """Downloads shards into the cache on a small thread pool; one future per shard and process."""

    def __init__(self, workers: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shard-download")
        self._futures: dict[str, Future[str]] = {}
        self._lock = threading.Lock()

    def prefetch(self, uri: str, local: str, sha256: str, size: int) -> Future[str]:
        """Start downloading `uri` to `local` unless it is already there or on its way."""
        with self._lock:
            future = self._futures.get(local)
            if future is None:
                future = self._pool.submit(fetch, uri, local, sha256, size)
                self._futures[local] = future
            return future

    def get(self, uri: str, local: str, sha256: str, size: int) -> str:
        """The verified local copy of `uri`, downloading (or waiting for a prefetch) if needed."""
        return self.prefetch(uri, local, sha256, size).result()

    def close(self) -> None:
        """Drop queued downloads (a finished run needs none); a running one completes or is left
        as a temp file that the next download of that shard removes."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _complete(path: str, size: int) -> bool:
    try:
        return os.path.getsize(path) == size
    except FileNotFoundError:
        return False


def fetch(uri: str, local: str, sha256: str, size: int, backoff_s: float = 0.5) -> str:
    """Download `uri` to `local` unless a complete copy is there; verified, atomic, safe against
    other processes doing the same. Raises DataError naming the URI after ATTEMPTS failures."""
    if _complete(local, size):
        return local
    os.makedirs(os.path.dirname(local), exist_ok=True)
    with open(local + ".lock", "ab") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if _complete(local, size):  # another rank finished it while this one waited
            return local
        _remove_stale_temps(local)
        error = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                time.sleep(backoff_s * 2 ** (attempt - 1))
            tmp = f"{local}.tmp-{os.getpid()}-{threading.get_ident()}"
            try:
                got_bytes, got_sha = _copy(uri, tmp)
            except FileNotFoundError:
                _remove(tmp)
                raise DataError(
                    f"{uri}: listed in the dataset manifest but missing from storage; "
                    "upload the whole prepared dataset directory again"
                ) from None
            except Exception as e:  # network/credential errors: botocore, aiohttp, OSError, ...
                _remove(tmp)
                error = f"{type(e).__name__}: {e}"
                log.warning("download of %s failed (attempt %d/%d): %s", uri, attempt + 1, ATTEMPTS, error)
                continue
            if got_sha == sha256 and got_bytes == size:
                os.replace(tmp, local)
                return local
            _remove(tmp)
            error = (
                f"received {got_bytes} bytes with sha256 {got_sha}, the manifest says {size} bytes "
                f"with sha256 {sha256}"
            )
            log.warning("download of %s is corrupt (attempt %d/%d): %s", uri, attempt + 1, ATTEMPTS, error)
    raise DataError(
        f"{uri}: download failed {ATTEMPTS} times, last: {error}; check the endpoint "
        "(AWS_ENDPOINT_URL), credentials and network, or re-upload the dataset if its "
        "files no longer match its manifest.json"
    )


def _copy(uri: str, tmp: str) -> tuple[int, str]:
    """Stream `uri` into `tmp`, hashing on the way; returns (bytes, sha256)."""
    fs, path = filesystem(uri)
    digest = hashlib.sha256()
    count = 0
    with fs.open(path, "rb") as src, open(tmp, "wb") as dst:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            count += len(chunk)
    return count, digest.hexdigest()


def _remove_stale_temps(local: str) -> None:
    """Temp files of this shard left by a killed process (only the lock holder writes them)."""
    folder, name = os.path.split(local)
    for entry in os.listdir(folder):
        if entry.startswith(name + ".tmp-"):
            _remove(os.path.join(folder, entry))


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
