"""The node's cache of remote training data: verified whole files and byte ranges, bounded in size.

Layout: `<root>/<sha256(dataset URI)[:16]>/` per dataset, with a `uri.txt` naming the URI. Each entry
is named after the dataset file it comes from with that file's sha256 prefix put in
(`train/shard-00000.3f2a9c1e0b4d5a67.arrow` for a whole file, `...3f2a9c1e0b4d5a67.120-125.chunks`
for chunks 120-125 of its token ids), so a dataset re-prepared under the same URI never reuses a
stale copy.

An entry appears under its final name only once verified (temp file + rename), so a file that
exists is complete. The ranks of a node share the cache. Whole files (the shard table; shards of
datasets written before range reads) are large and every rank asks for the same ones, so an
exclusive `flock` per file makes one process download while the others wait. Byte ranges are small
and the ranks of a node read disjoint samples, so they go without a lock: should two processes
fetch the same range, both write identical verified bytes and the later rename wins. `flock` is
node-local: keep the cache on a node-local disk, not on a shared network file system.

Size: `usage` at the root holds the bytes the entries take on disk, updated under a lock by every
process that adds one. Past `max_bytes`, an eviction pass runs in the download pool of the process
that crossed it, one process at a time (the others go on): it lists the entries and deletes the
least recently read (file mtime, refreshed at every read) until the cache is at LOW_WATER of the
bound, then stores the recount; what arrives during a pass fits in the remaining headroom. A
reader that finds an entry deleted in between fetches it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, Callable, Iterator

import pyarrow as pa

from dist_llm.errors import DataError
from dist_llm.log import get_logger
from dist_llm.uri import download as stream_to_file

log = get_logger("data")

ATTEMPTS = 3
"""Downloads of one entry before giving up (network errors and failed verification alike)."""
LOW_WATER = 0.9
"""An eviction pass deletes entries until the cache holds this share of its bound."""
STALE_TEMP_S = 3600.0
"""A temp file this old was left by a killed process; an eviction pass deletes it."""
_LABEL = "uri.txt"
_USAGE = "usage"
_EVICTING = "evict.lock"

Download = Callable[[str], None]
"""Writes an entry's verified bytes to the temp path it is given, or raises: `Corrupt` (or any
error of the network) for another attempt, DataError or FileNotFoundError to stop."""


class Corrupt(Exception):
    """A transfer arrived but failed verification; the message says how."""


def default_cache_root() -> str:
    """$XDG_CACHE_HOME/dist_llm/data, else ~/.cache/dist_llm/data."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dist_llm", "data")


def cached_name(cache_dir: str, rel_path: str, sha256: str) -> str:
    """Where file `rel_path` of a dataset (as listed in its manifest) with this checksum lives in
    the dataset's cache directory."""
    stem, ext = os.path.splitext(rel_path)
    path = os.path.normpath(os.path.join(cache_dir, f"{stem}.{sha256[:16]}{ext}"))
    if not path.startswith(os.path.normpath(cache_dir) + os.sep):
        raise DataError(
            f"shard path {rel_path!r} in the manifest leaves the dataset directory; "
            "shard paths must be relative, without '..'"
        )
    return path


def verified_copy(uri: str, sha256: str, size: int) -> Download:
    """Download of the whole object `uri`, checked against its size and sha256."""

    def download(tmp: str) -> None:
        count, digest = stream_to_file(uri, tmp)
        if count != size or digest != sha256:
            raise Corrupt(
                f"received {count} bytes with sha256 {digest}, the manifest says {size} "
                f"bytes with sha256 {sha256}"
            )

    return download


class DataCache:
    """One process's view of the node's cache under `root` ("" = the default root), holding at most
    `max_bytes` on disk (None: no bound, for one-off readers such as preflight), and its pool of
    `workers` download threads that fetch ahead of the reads."""

    def __init__(self, root: str = "", max_bytes: int | None = None, workers: int = 4) -> None:
        self.root = os.path.expanduser(root) or default_cache_root()
        self.max_bytes = max_bytes
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="data-download")
        self._pending: dict[str, Future[str]] = {}
        """Downloads queued or running, by entry path; a finished one leaves (its file stays)."""
        self._lock = threading.Lock()
        self._eviction_queued = False

    def dataset_dir(self, uri: str) -> str:
        """The cache directory of dataset `uri`, created with a `uri.txt` naming the URI, so a
        person cleaning the cache knows what each directory holds."""
        uri = uri.rstrip("/")
        folder = os.path.join(self.root, hashlib.sha256(uri.encode()).hexdigest()[:16])
        label = os.path.join(folder, _LABEL)
        if not os.path.exists(label):
            os.makedirs(folder, exist_ok=True)
            tmp = f"{label}.tmp-{os.getpid()}-{threading.get_ident()}"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(uri + "\n")
            os.replace(tmp, label)
        return folder

    def prefetch(self, uri: str, local: str, size: int, download: Download, shared: bool) -> Future[str]:
        """Start fetching `uri` into entry `local` (`size` bytes) unless it is there or on its way;
        `shared`: the ranks of the node may want it at once (whole files), so they take turns."""
        with self._lock:
            future = self._pending.get(local)
            new = future is None
            if new:
                future = self._pool.submit(self._obtain, uri, local, size, download, shared)
                self._pending[local] = future
        if new:  # outside the lock: a future already done runs the callback right here
            future.add_done_callback(lambda done: self._settle(local, done))
        return future

    def get(self, uri: str, local: str, size: int, download: Download, shared: bool) -> str:
        """The verified entry `local`: waits for its prefetch, else fetches it in this thread."""
        with self._lock:
            future = self._pending.get(local)
        if future is not None:
            return future.result()
        return self._obtain(uri, local, size, download, shared)

    def open_file(self, uri: str, local: str, sha256: str, size: int) -> BinaryIO:
        """The verified whole copy of `uri`, opened for reading (another process may evict the
        entry between fetching and opening it: then it is fetched again)."""
        download = verified_copy(uri, sha256, size)
        try:
            return open(self.get(uri, local, size, download, shared=True), "rb")
        except FileNotFoundError:
            return open(self._obtain(uri, local, size, download, shared=True), "rb")

    def map_file(self, uri: str, local: str, sha256: str, size: int) -> pa.MemoryMappedFile:
        """The verified whole copy of `uri`, memory-mapped (fetched again if evicted meanwhile)."""
        download = verified_copy(uri, sha256, size)
        try:
            return pa.memory_map(self.get(uri, local, size, download, shared=True), "r")
        except FileNotFoundError:
            return pa.memory_map(self._obtain(uri, local, size, download, shared=True), "r")

    def prefetch_file(self, uri: str, local: str, sha256: str, size: int) -> None:
        self.prefetch(uri, local, size, verified_copy(uri, sha256, size), shared=True)

    def close(self) -> None:
        """Drop queued downloads (a finished run needs none); a running one completes or is left
        as a temp file that a later download or eviction pass removes."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _settle(self, local: str, future: Future[str]) -> None:
        # A failed download stays, so the read that wanted it raises its error.
        if not future.cancelled() and future.exception() is None:
            with self._lock:
                if self._pending.get(local) is future:
                    del self._pending[local]

    def _obtain(self, uri: str, local: str, size: int, download: Download, shared: bool) -> str:
        if _present(local, size):
            return local
        os.makedirs(os.path.dirname(local), exist_ok=True)
        if not shared:
            return self._download(uri, local, download)
        with open(local + ".lock", "ab") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
            if _present(local, size):  # another rank finished it while this one waited
                return local
            _remove_stale_temps(local)
            return self._download(uri, local, download)

    def _download(self, uri: str, local: str, download: Download, backoff_s: float = 0.5) -> str:
        """Run `download` into a temp file up to ATTEMPTS times, then rename it into place and
        count it. Raises DataError naming the URI."""
        error = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                time.sleep(backoff_s * 2 ** (attempt - 1))
            tmp = f"{local}.tmp-{os.getpid()}-{threading.get_ident()}"
            try:
                download(tmp)
            except FileNotFoundError:
                _remove(tmp)
                raise DataError(
                    f"{uri}: listed in the dataset manifest but missing from storage; "
                    "upload the whole prepared dataset directory again"
                ) from None
            except DataError:
                _remove(tmp)
                raise
            except Exception as e:  # Corrupt, or network/credential errors: botocore, aiohttp, OSError
                _remove(tmp)
                error = str(e) if isinstance(e, Corrupt) else f"{type(e).__name__}: {e}"
                log.warning("download of %s failed (attempt %d/%d): %s", uri, attempt + 1, ATTEMPTS, error)
                continue
            os.replace(tmp, local)
            self._add(local)
            return local
        raise DataError(
            f"{uri}: download failed {ATTEMPTS} times, last: {error}; check the endpoint "
            "(AWS_ENDPOINT_URL), credentials and network, or re-upload the dataset if its "
            "files no longer match its manifest.json"
        )

    @contextlib.contextmanager
    def _usage(self) -> Iterator[tuple[int | None, Callable[[int], None]]]:
        """(bytes recorded or None if there is no record yet, a setter), under the usage lock."""
        os.makedirs(self.root, exist_ok=True)
        fd = os.open(os.path.join(self.root, _USAGE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            text = os.pread(fd, 32, 0)
            recorded = int(text) if text.strip().isdigit() else None

            def store(total: int) -> None:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{max(total, 0)}\n".encode(), 0)

            yield recorded, store
        finally:
            os.close(fd)

    def _add(self, entry: str) -> None:
        """Count a new entry and, past the bound, evict others."""
        nbytes = os.stat(entry).st_blocks * 512
        with self._usage() as (recorded, store):
            # No record yet (a new cache, or one an earlier version filled): count what is there,
            # the new entry included.
            total = recorded + nbytes if recorded is not None else sum(e[1] for e in self._entries())
            store(total)
        if self.max_bytes is not None and total > self.max_bytes:
            with self._lock:
                queued, self._eviction_queued = self._eviction_queued, True
            if not queued:  # in the pool: listing a large cache must not stall a reading thread
                self._pool.submit(self._evict, entry)

    def _evict(self, keep: str) -> None:
        """Delete the least recently read entries but `keep` (about to be read) down to LOW_WATER."""
        with self._lock:
            self._eviction_queued = False
        with open(os.path.join(self.root, _EVICTING), "ab") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another process is evicting
            with self._usage() as (before, _):
                pass
            entries = sorted(self._entries())
            total = sum(nbytes for _, nbytes, _ in entries)
            target = LOW_WATER * self.max_bytes
            for _, nbytes, path in entries:
                if total <= target:
                    break
                if path != keep:
                    _remove(path)
                    total -= nbytes
            with self._usage() as (now, store):
                # Entries added while this pass listed: what the record grew by since its start.
                store(total + (now or 0) - (before or 0))

    def _entries(self) -> list[tuple[float, int, str]]:
        """(mtime, bytes on disk, path) of every entry; stale temp files are deleted on the way.
        Only dataset directories (those with a `uri.txt`) are searched, so a cache root that also
        holds other files never loses them."""
        found = []
        stale = time.time() - STALE_TEMP_S
        datasets = [e.path for e in os.scandir(self.root) if os.path.exists(os.path.join(e.path, _LABEL))]
        for folder, _, names in (step for dataset in datasets for step in os.walk(dataset)):
            for name in names:
                if name == _LABEL or name.endswith(".lock"):
                    continue
                path = os.path.join(folder, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                if ".tmp-" in name:
                    if st.st_mtime < stale:
                        _remove(path)
                    continue
                found.append((st.st_mtime, st.st_blocks * 512, path))
        return found


def _present(path: str, size: int) -> bool:
    """Whether a complete entry is at `path`; marks it as just read (for LRU eviction)."""
    try:
        if os.path.getsize(path) != size:
            return False
        os.utime(path)
        return True
    except FileNotFoundError:
        return False


def _remove_stale_temps(local: str) -> None:
    """Temp files of this entry left by a killed process (only the lock holder writes them)."""
    folder, name = os.path.split(local)
    for entry in os.listdir(folder):
        if entry.startswith(name + ".tmp-"):
            _remove(os.path.join(folder, entry))


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
