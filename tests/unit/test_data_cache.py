"""Remote datasets: read by byte range (only the verified chunks a window covers) into a node cache
bounded in size; datasets of the format before range reads download whole shards.

fsspec's in-process `memory://` filesystem stands in for object storage here (same code path as
s3://, no server); tests/integration/test_s3_data.py repeats the essentials against SeaweedFS and
counts the bytes the store actually sent.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import uuid

import fsspec
import numpy as np
import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem

from data_prep.checks import CHUNK_BYTES, checks_path
from data_prep.manifest import SHARD_TABLE_NAME, read_manifest
from dist_llm.config import load_config
from dist_llm.data import cache as cache_mod
from dist_llm.data.cache import DataCache, cached_name, verified_copy
from dist_llm.data.collate import CausalLMCollator
from dist_llm.data.loader import TrainBatches
from dist_llm.data.mixture import Source
from dist_llm.data.packing import PackedSamples
from dist_llm.data.shards import TokenShards
from dist_llm.errors import ConfigError, DataError
from tests.unit.shard_data import counting_docs, make_dataset, to_whole_shard_format

SEQ = 8


def upload(local_dir: str) -> str:
    """Copy a dataset directory into the in-memory filesystem; returns its memory:// URI."""
    uri = f"memory://ds-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("memory")
    for root, _, files in os.walk(local_dir):
        for name in files:
            path = os.path.join(root, name)
            fs.pipe(f"{uri}/{os.path.relpath(path, local_dir)}", open(path, "rb").read())
    return uri


@pytest.fixture
def local_and_remote(tmp_path) -> tuple[str, str]:
    """Shards of about 1,000 uint32 tokens (about 31 chunks each)."""
    local = make_dataset(
        str(tmp_path / "ds"),
        {"train": counting_docs(700), "validation": counting_docs(10)},
        shard_tokens=1000,
    )
    return local, upload(local)


@pytest.fixture
def whole_shard_dataset(tmp_path) -> tuple[str, str]:
    """A small dataset in the format before range reads, locally and in storage."""
    local = make_dataset(
        str(tmp_path / "old"), {"train": counting_docs(60), "validation": counting_docs(10)}, shard_tokens=60
    )
    to_whole_shard_format(local)
    return local, upload(local)


def cache_files(cache_root: str, suffix: str) -> list[str]:
    found = []
    for root, _, files in os.walk(cache_root):
        found.extend(os.path.relpath(os.path.join(root, f), cache_root) for f in files if f.endswith(suffix))
    return sorted(found)


def shard_files(cache_root: str) -> list[str]:
    """Cached whole shards (the manifest's cached shard table left out)."""
    return [f for f in cache_files(cache_root, ".arrow") if SHARD_TABLE_NAME.removesuffix(".arrow") not in f]


@pytest.fixture
def fetched(monkeypatch) -> list[tuple[str, int]]:
    """(path, bytes) of every ranged read from the in-memory store."""
    calls: list[tuple[str, int]] = []
    real = MemoryFileSystem.cat_file

    def counting(self, path, start=None, end=None, **kwargs):
        data = real(self, path, start=start, end=end, **kwargs)
        calls.append((path, len(data)))
        return data

    monkeypatch.setattr(MemoryFileSystem, "cat_file", counting)
    return calls


def test_a_read_fetches_only_the_chunks_it_covers_and_their_checks(local_and_remote, tmp_path, fetched):
    local, remote = local_and_remote
    cache_root = str(tmp_path / "cache")
    shards = TokenShards(remote, "train", cache=DataCache(cache_root))
    reference = TokenShards(local, "train")
    assert shards.num_tokens == reference.num_tokens and len(shards.table) >= 8
    assert fetched == [] and cache_files(cache_root, ".chunks") == []  # opening reads only the manifest
    first, second = int(shards.table.tokens[0]), int(shards.table.tokens[1])
    start = first + second // 2  # the middle of shard 1
    assert np.array_equal(shards.read(start, SEQ + 1), reference.read(start, SEQ + 1))
    path = shards.table.path(1)
    assert [p for p, _ in fetched] == [f"/{remote[9:]}/{path}", f"/{remote[9:]}/{checks_path(path)}"]
    data_bytes, check_bytes = fetched[0][1], fetched[1][1]
    assert data_bytes <= 2 * CHUNK_BYTES and check_bytes == 4 * (data_bytes // CHUNK_BYTES)
    assert data_bytes < shards.table.bytes[1] / 10
    (entry,) = cache_files(cache_root, ".chunks")
    assert (
        shards.table.sha256(1)[:16] in entry
        and os.path.getsize(os.path.join(cache_root, entry)) == data_bytes
    )

    fetched.clear()  # the same window again comes from the cache; one across a shard boundary
    assert np.array_equal(shards.read(start, SEQ + 1), reference.read(start, SEQ + 1))
    assert fetched == []
    assert np.array_equal(shards.read(first - 3, SEQ + 1), reference.read(first - 3, SEQ + 1))
    assert len(fetched) == 4 and len(cache_files(cache_root, ".chunks")) == 3


def test_remote_copy_gives_the_same_batches_and_state(local_and_remote, tmp_path):
    local, remote = local_and_remote
    steps = []
    for path in (local, remote):
        samples = PackedSamples(TokenShards(path, "train", cache=DataCache(str(tmp_path / "cache"))), SEQ)
        batches = TrainBatches(
            [Source("", 1.0, samples)], CausalLMCollator(), 7, 8, 2, 0, 1, prefetch_steps=2
        )
        steps.append(([batches.next_step() for _ in range(12)], batches.state()))
    (a, state_a), (b, state_b) = steps
    assert state_a == state_b
    for mb_a, mb_b in zip(a, b):
        for x, y in zip(mb_a, mb_b):
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _runs(shards: TokenShards, samples: list[int], cache_root: str) -> set[str]:
    """The cache entries that reading these samples' windows leaves."""
    return {
        os.path.relpath(shards._ranges._run(shard, offset, take)[1], cache_root)
        for sample in samples
        for shard, offset, take in shards.pieces(sample * SEQ, SEQ + 1)
    }


def test_prefetch_fetches_the_coming_steps_ranges_and_no_others(local_and_remote, tmp_path):
    _, remote = local_and_remote
    cache_root = str(tmp_path / "cache")
    cache = DataCache(cache_root, workers=2)
    shards = TokenShards(remote, "train", cache=cache)
    samples = PackedSamples(shards, SEQ)
    # Rank 1 of 2, so the prefetch must follow this rank's slices, not the whole global batch.
    batches = TrainBatches([Source("", 1.0, samples)], CausalLMCollator(), 3, 4, 2, 1, 2, prefetch_steps=2)
    batches.next_step()
    needed = set()
    for step in range(4):  # the step just taken and the two ahead of the next one
        needed |= _runs(
            shards, [sample for _, sample in batches.order.sample_ids(step * 4 + 2, 2)], cache_root
        )
    # Wait for every queued download (close() would cancel the queued ones by design).
    cache._pool.shutdown(wait=True)
    assert cache_files(cache_root, ".chunks") == sorted(needed)
    assert len(needed) >= 6


def test_prefetch_stops_where_the_run_ends(local_and_remote, tmp_path):
    _, remote = local_and_remote
    cache_root = str(tmp_path / "cache")
    cache = DataCache(cache_root, workers=2)
    shards = TokenShards(remote, "train", cache=cache)
    batches = TrainBatches(
        [Source("", 1.0, PackedSamples(shards, SEQ))],
        CausalLMCollator(),
        3,
        4,
        2,
        0,
        1,
        prefetch_steps=8,
        end_samples=3 * 4,
    )
    for _ in range(3):
        batches.next_step()
    cache._pool.shutdown(wait=True)
    trained = [sample for _, sample in batches.order.sample_ids(0, 3 * 4)]
    assert cache_files(cache_root, ".chunks") == sorted(_runs(shards, trained, cache_root))


def _flip(uri: str, position: int) -> None:
    fs = fsspec.filesystem("memory")
    data = bytearray(fs.cat(uri))
    data[position] ^= 0xFF
    fs.pipe(uri, bytes(data))


@pytest.mark.parametrize("damaged", ["shard", "checks"])
def test_a_corrupt_range_is_refused_naming_the_uri(local_and_remote, tmp_path, monkeypatch, damaged):
    local, remote = local_and_remote
    train = read_manifest(local).shards["train"]
    shard_uri = f"{remote}/{train.path(0)}"
    if damaged == "shard":
        _flip(shard_uri, int(train.values_offsets[0]) + 4)  # token 1
    else:
        _flip(f"{remote}/{checks_path(train.path(0))}", 0)  # the check of chunk 0
    monkeypatch.setattr(cache_mod.time, "sleep", lambda s: None)
    shards = TokenShards(remote, "train", cache=DataCache(str(tmp_path / "cache")))
    with pytest.raises(DataError, match=f"download failed {cache_mod.ATTEMPTS} times") as err:
        shards.read(0, 5)
    message = str(err.value)
    assert shard_uri in message and "chunks 0-0 of its token ids) do not match their checks" in message
    assert cache_files(str(tmp_path / "cache"), ".chunks") == []
    assert not [f for f in cache_files(str(tmp_path / "cache"), "") if ".tmp-" in f]
    # Other shards still read.
    start = int(train.tokens[0])
    assert np.array_equal(shards.read(start, 5), TokenShards(local, "train").read(start, 5))


def test_a_shard_replaced_since_the_manifest_was_written_is_refused(local_and_remote, tmp_path, monkeypatch):
    """Another valid shard with its own valid checks under the same name: the checks are bound to
    the sha256 the manifest lists, so the replacement fails them."""
    local, remote = local_and_remote
    other = make_dataset(
        str(tmp_path / "other"), {"train": counting_docs(700, first_token=5)}, shard_tokens=1000
    )
    train = read_manifest(local).shards["train"]
    fs = fsspec.filesystem("memory")
    for rel in (train.path(0), checks_path(train.path(0))):
        fs.pipe(f"{remote}/{rel}", open(os.path.join(other, rel), "rb").read())
    monkeypatch.setattr(cache_mod.time, "sleep", lambda s: None)
    with pytest.raises(DataError, match="do not match their checks"):
        TokenShards(remote, "train", cache=DataCache(str(tmp_path / "cache"))).read(0, 5)


def test_a_corrupt_transfer_is_retried(local_and_remote, tmp_path, monkeypatch, fetched):
    local, remote = local_and_remote
    real = MemoryFileSystem.cat_file  # the counting one
    damaged = []

    def flaky(self, path, start=None, end=None, **kwargs):
        data = real(self, path, start=start, end=end, **kwargs)
        if path.endswith(".arrow") and not damaged:  # the first transfer arrives damaged
            damaged.append(path)
            return b"\0" * len(data)
        return data

    monkeypatch.setattr(MemoryFileSystem, "cat_file", flaky)
    monkeypatch.setattr(cache_mod.time, "sleep", lambda s: None)
    shards = TokenShards(remote, "train", cache=DataCache(str(tmp_path / "cache")))
    assert np.array_equal(shards.read(0, 40), TokenShards(local, "train").read(0, 40))
    assert len(damaged) == 1 and len(fetched) == 4  # data and checks, twice


@pytest.mark.parametrize("missing", ["shard", "checks"])
def test_a_missing_object_is_named(local_and_remote, tmp_path, missing):
    _, remote = local_and_remote
    shards = TokenShards(remote, "train", cache=DataCache(str(tmp_path / "cache")))
    path = shards.table.path(1)
    uri = f"{remote}/{path if missing == 'shard' else checks_path(path)}"
    fsspec.filesystem("memory").rm(uri)
    with pytest.raises(DataError, match="missing from storage") as err:
        shards.read(int(shards.table.tokens[0]), 2)  # the first tokens of shard 1
    assert uri in str(err.value)


def test_missing_manifest_names_the_uri(tmp_path):
    with pytest.raises(DataError, match="memory://nothing-here/manifest.json"):
        TokenShards("memory://nothing-here", "train", cache=DataCache(str(tmp_path)))


def test_shard_paths_cannot_leave_the_cache_directory(tmp_path):
    with pytest.raises(DataError, match="leaves the dataset directory"):
        cached_name(str(tmp_path), "../../etc/passwd", "0" * 64)


def _disk_usage(root: str) -> int:
    """Bytes on disk of the cache's entries, counted as the cache counts them."""
    return sum(nbytes for _, nbytes, _ in DataCache(root)._entries())


def test_the_cache_stays_under_its_bound_deleting_the_least_recently_read(local_and_remote, tmp_path):
    local, remote = local_and_remote
    cache_root = str(tmp_path / "cache")
    bound = 64 * 4096  # 64 entries of one file-system block each
    cache = DataCache(cache_root, max_bytes=bound, workers=1)
    os.makedirs(os.path.join(cache_root, "other"))
    for name in ("notes.txt", "other/data.bin"):  # not the cache's: never counted, never deleted
        with open(os.path.join(cache_root, name), "wb") as f:
            f.write(os.urandom(bound))
    shards, reference = TokenShards(remote, "train", cache=cache), TokenShards(local, "train")
    kept = shards.read(0, SEQ + 1)  # read again and again below: it must never be evicted
    entry = cache_files(cache_root, ".chunks")[0]
    windows = np.random.default_rng(0).integers(0, shards.num_tokens - SEQ - 1, 400)
    for i, start in enumerate(windows.tolist()):
        assert np.array_equal(shards.read(start, SEQ + 1), reference.read(start, SEQ + 1))
        cache._pool.submit(lambda: None).result()  # one worker: any eviction queued has run
        assert _disk_usage(cache_root) <= bound
        if i % 10 == 0:
            assert np.array_equal(shards.read(0, SEQ + 1), kept)
    entries = cache_files(cache_root, ".chunks")
    assert entry in entries and 20 < len(entries) < 80
    assert os.path.getsize(os.path.join(cache_root, "other/data.bin")) == bound
    with open(os.path.join(cache_root, "usage")) as f:  # the shared count agrees with the disk
        assert int(f.read()) == _disk_usage(cache_root)


def test_a_cache_without_a_usage_record_counts_what_it_holds(local_and_remote, tmp_path):
    """A cache directory an earlier version filled (no usage record) is bounded from the first
    entry this version adds."""
    _, remote = local_and_remote
    cache_root = str(tmp_path / "cache")
    shards = TokenShards(remote, "train", cache=DataCache(cache_root))
    for start in range(0, 4000, 100):
        shards.read(start, SEQ + 1)
    os.remove(os.path.join(cache_root, "usage"))
    before = _disk_usage(cache_root)
    cache = DataCache(cache_root, max_bytes=before // 2)
    TokenShards(remote, "train", cache=cache).read(5000, SEQ + 1)
    cache._pool.shutdown(wait=True)  # the eviction pass runs in the pool
    assert _disk_usage(cache_root) <= before // 2


def test_an_earlier_format_dataset_downloads_whole_shards(whole_shard_dataset, tmp_path):
    local, remote = whole_shard_dataset
    cache_root = str(tmp_path / "cache")
    shards = TokenShards(remote, "train", cache=DataCache(cache_root))
    assert shards.table.values_offsets is None and shard_files(cache_root) == []
    assert np.array_equal(shards.read(0, 5), TokenShards(local, "train").read(0, 5))
    path, sha256 = shards.table.path(0), shards.table.sha256(0)
    expected = os.path.relpath(
        cached_name(DataCache(cache_root).dataset_dir(remote), path, sha256), cache_root
    )
    assert shard_files(cache_root) == [expected] and cache_files(cache_root, ".chunks") == []
    with open(os.path.join(cache_root, expected), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == sha256


def test_an_earlier_format_corrupt_shard_is_never_used(whole_shard_dataset, tmp_path, monkeypatch):
    local, remote = whole_shard_dataset
    train = read_manifest(local).shards["train"]
    uri = f"{remote}/{train.path(0)}"
    _flip(uri, int(train.bytes[0]) // 2)
    monkeypatch.setattr(cache_mod.time, "sleep", lambda s: None)
    shards = TokenShards(remote, "train", cache=DataCache(str(tmp_path / "cache")))
    with pytest.raises(DataError, match=f"download failed {cache_mod.ATTEMPTS} times") as err:
        shards.read(0, 5)
    assert uri in str(err.value) and train.sha256(0) in str(err.value)
    assert shard_files(str(tmp_path / "cache")) == []  # neither under its name nor as a temp


def test_an_earlier_format_partial_cached_shard_is_downloaded_again(whole_shard_dataset, tmp_path):
    local, remote = whole_shard_dataset
    cache_root = str(tmp_path / "cache")
    train = TokenShards(local, "train").table
    target = cached_name(DataCache(cache_root).dataset_dir(remote), train.path(0), train.sha256(0))
    os.makedirs(os.path.dirname(target))
    with open(target, "wb") as f:
        f.write(b"partial")
    with open(target + ".tmp-99999-1", "wb") as f:  # what a killed download leaves behind
        f.write(b"stale")
    shards = TokenShards(remote, "train", cache=DataCache(cache_root))
    assert np.array_equal(shards.read(0, 30), TokenShards(local, "train").read(0, 30))
    assert os.path.getsize(target) == train.bytes[0] and not os.path.exists(target + ".tmp-99999-1")


def _fetch_shared(root: str, source: str, local: str, sha256: str, size: int) -> str:
    return DataCache(root).get(source, local, size, verified_copy(source, sha256, size), shared=True)


def test_processes_fetching_one_file_at_once_share_one_verified_copy(tmp_path):
    """What ranks on one node do with a whole file: each asks for it; one downloads, the others wait."""
    source = tmp_path / "source.arrow"
    data = os.urandom(3 << 20)
    source.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    root = str(tmp_path / "cache")
    local = os.path.join(root, "train", f"shard.{sha[:16]}.arrow")
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.starmap(_fetch_shared, [(root, str(source), local, sha, len(data))] * 8)
    assert results == [local] * 8
    assert hashlib.sha256(open(local, "rb").read()).hexdigest() == sha
    name = os.path.basename(local)
    assert sorted(os.listdir(os.path.dirname(local))) == [name, name + ".lock"]  # no temp file left
    with open(os.path.join(root, "usage")) as f:  # counted once
        assert int(f.read()) == _disk_usage(root)


def test_the_cache_bound_must_be_positive():
    with pytest.raises(ConfigError, match=r"data.cache_max_gb=0\.0 must be"):
        load_config(None, ["data.cache_max_gb=0"]).validate()
