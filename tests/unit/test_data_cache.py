"""Remote datasets: shards are downloaded on first use into a verified local cache.

fsspec's in-process `memory://` filesystem stands in for object storage here (same code path as
s3://, no server); tests/integration/test_s3_data.py repeats the essentials against SeaweedFS.
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

from data_prep.manifest import SHARD_TABLE_NAME, read_manifest
from dist_llm.data import cache as cache_mod
from dist_llm.data.cache import ShardCache, cached_name, dataset_cache_dir, fetch
from dist_llm.data.collate import CausalLMCollator
from dist_llm.data.loader import TrainBatches
from dist_llm.data.mixture import Source
from dist_llm.data.packing import PackedSamples
from dist_llm.data.shards import TokenShards
from dist_llm.errors import DataError
from tests.unit.shard_data import counting_docs, make_dataset

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
    local = make_dataset(
        str(tmp_path / "ds"), {"train": counting_docs(60), "validation": counting_docs(10)}, shard_tokens=60
    )
    return local, upload(local)


def cached_files(cache_root: str) -> list[str]:
    """Cached shards (the manifest's cached shard table left out)."""
    found = []
    for root, _, files in os.walk(cache_root):
        found.extend(
            os.path.relpath(os.path.join(root, f), cache_root)
            for f in files
            if f.endswith(".arrow") and not f.startswith(SHARD_TABLE_NAME.removesuffix(".arrow"))
        )
    return sorted(found)


def test_opening_downloads_only_the_shard_table_and_a_read_fetches_only_its_shards(
    local_and_remote, tmp_path
):
    local, remote = local_and_remote
    cache_root = str(tmp_path / "cache")
    shards = TokenShards(remote, "train", cache_dir=cache_root)
    assert len(shards.table) >= 6 and shards.num_tokens == TokenShards(local, "train").num_tokens
    assert cached_files(cache_root) == []
    folder = dataset_cache_dir(cache_root, remote)
    table = read_manifest(local).header["shard_table"]
    assert os.path.exists(cached_name(folder, SHARD_TABLE_NAME, table["sha256"]))
    path, sha256 = shards.table.path(0), shards.table.sha256(0)
    assert np.array_equal(shards.read(0, 5), TokenShards(local, "train").read(0, 5))
    expected = os.path.relpath(cached_name(folder, path, sha256), cache_root)
    assert cached_files(cache_root) == [expected]
    assert sha256[:16] in expected and open(os.path.join(folder, "uri.txt")).read() == remote + "\n"


def test_remote_copy_gives_the_same_batches_and_state(local_and_remote, tmp_path):
    local, remote = local_and_remote
    steps = []
    for path in (local, remote):
        samples = PackedSamples(TokenShards(path, "train", cache_dir=str(tmp_path / "cache")), SEQ)
        batches = TrainBatches(
            [Source("", 1.0, samples)], CausalLMCollator(), 7, 8, 2, 0, 1, prefetch_steps=2
        )
        steps.append(([batches.next_step() for _ in range(12)], batches.state()))
    (a, state_a), (b, state_b) = steps
    assert state_a == state_b
    for mb_a, mb_b in zip(a, b):
        for x, y in zip(mb_a, mb_b):
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_prefetch_downloads_the_coming_steps_shards_and_no_others(local_and_remote, tmp_path):
    _, remote = local_and_remote
    cache_root = str(tmp_path / "cache")
    cache = ShardCache(workers=2)
    shards = TokenShards(remote, "train", cache_dir=cache_root, cache=cache)
    samples = PackedSamples(shards, SEQ)
    # Rank 1 of 2, so the prefetch must follow this rank's slices, not the whole global batch.
    batches = TrainBatches([Source("", 1.0, samples)], CausalLMCollator(), 3, 4, 2, 1, 2, prefetch_steps=2)
    batches.next_step()
    needed = set()
    for step in range(3):  # the step just taken and the two ahead
        start = step * 4 + 2
        for sample in batches.order.sample_ids(start, 2):
            needed.update(shards.shards_of(sample[1] * SEQ, SEQ + 1))
    # Wait for every queued download (close() would cancel the queued ones by design).
    cache._pool.shutdown(wait=True)
    folder = dataset_cache_dir(cache_root, remote)
    expected = sorted(
        os.path.relpath(cached_name(folder, shards.table.path(i), shards.table.sha256(i)), cache_root)
        for i in needed
    )
    assert cached_files(cache_root) == expected
    assert len(expected) < len(shards.table)


def _corrupt_remote_shard(local: str, remote: str) -> tuple[str, str]:
    """Flip a byte of the first train shard in storage; returns its URI and listed sha256."""
    train = read_manifest(local).shards["train"]
    uri = f"{remote}/{train.path(0)}"
    data = bytearray(fsspec.filesystem("memory").cat(uri))
    data[len(data) // 2] ^= 0xFF
    fsspec.filesystem("memory").pipe(uri, bytes(data))
    return uri, train.sha256(0)


def test_corrupt_object_is_never_used_and_fails_naming_the_uri(local_and_remote, tmp_path, monkeypatch):
    local, remote = local_and_remote
    uri, sha256 = _corrupt_remote_shard(local, remote)
    monkeypatch.setattr(cache_mod.time, "sleep", lambda s: None)
    shards = TokenShards(remote, "train", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match=f"download failed {cache_mod.ATTEMPTS} times") as err:
        shards.read(0, 5)
    assert uri in str(err.value) and sha256 in str(err.value)
    assert cached_files(str(tmp_path / "cache")) == []  # neither under its name nor as a temp


def test_a_corrupt_transfer_is_retried(local_and_remote, tmp_path, monkeypatch):
    local, remote = local_and_remote
    real_copy = cache_mod._copy
    calls = []

    def flaky_copy(uri: str, tmp: str) -> tuple[int, str]:
        calls.append(uri)
        size, sha = real_copy(uri, tmp)
        if len(calls) == 1:  # the first transfer arrives damaged
            with open(tmp, "r+b") as f:
                f.write(b"\0" * 16)
            return size, hashlib.sha256(open(tmp, "rb").read()).hexdigest()
        return size, sha

    shards = TokenShards(remote, "train", cache_dir=str(tmp_path / "cache"))  # fetches the shard table
    monkeypatch.setattr(cache_mod, "_copy", flaky_copy)
    monkeypatch.setattr(cache_mod.time, "sleep", lambda s: None)
    assert np.array_equal(shards.read(0, 40), TokenShards(local, "train").read(0, 40))
    assert len(calls) == 2


def test_a_partial_cached_file_is_downloaded_again(local_and_remote, tmp_path):
    local, remote = local_and_remote
    cache_root = str(tmp_path / "cache")
    train = TokenShards(local, "train").table
    target = cached_name(dataset_cache_dir(cache_root, remote), train.path(0), train.sha256(0))
    os.makedirs(os.path.dirname(target))
    with open(target, "wb") as f:
        f.write(b"partial")
    with open(target + ".tmp-99999-1", "wb") as f:  # what a killed download leaves behind
        f.write(b"stale")
    shards = TokenShards(remote, "train", cache_dir=cache_root)
    assert np.array_equal(shards.read(0, 30), TokenShards(local, "train").read(0, 30))
    assert os.path.getsize(target) == train.bytes[0] and not os.path.exists(target + ".tmp-99999-1")


def test_missing_object_names_the_uri(local_and_remote, tmp_path):
    _, remote = local_and_remote
    shards = TokenShards(remote, "train", cache_dir=str(tmp_path / "cache"))
    uri = f"{remote}/{shards.table.path(1)}"
    fsspec.filesystem("memory").rm(uri)
    with pytest.raises(DataError, match="missing from storage") as err:
        shards.read(int(shards.table.tokens[0]), 2)  # the first tokens of shard 1
    assert uri in str(err.value)


def test_missing_manifest_names_the_uri(tmp_path):
    with pytest.raises(DataError, match="memory://nothing-here/manifest.json"):
        TokenShards("memory://nothing-here", "train", cache_dir=str(tmp_path))


def test_shard_paths_cannot_leave_the_cache_directory(tmp_path):
    with pytest.raises(DataError, match="leaves the dataset directory"):
        cached_name(str(tmp_path), "../../etc/passwd", "0" * 64)


def test_processes_fetching_one_shard_at_once_share_one_verified_copy(tmp_path):
    """What ranks on one node do: each asks for the same shard; one downloads, the others wait."""
    source = tmp_path / "source.arrow"
    data = os.urandom(3 << 20)
    source.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    local = str(tmp_path / "cache" / "train" / f"shard.{sha[:16]}.arrow")
    with multiprocessing.get_context("spawn").Pool(4) as pool:  # fetch's module is light to import
        results = pool.starmap(fetch, [(str(source), local, sha, len(data))] * 8)
    assert results == [local] * 8
    assert hashlib.sha256(open(local, "rb").read()).hexdigest() == sha
    name = os.path.basename(local)
    assert sorted(os.listdir(os.path.dirname(local))) == [name, name + ".lock"]  # no temp file left
