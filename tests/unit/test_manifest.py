"""The manifest: a small JSON header plus a columnar shard table, written table first; datasets of the
earlier format (every shard listed inside the JSON) still load; a million shards load as arrays."""

from __future__ import annotations

import hashlib
import json
import os
import time
import tracemalloc

import numpy as np
import pyarrow as pa
import pytest

from data_prep import manifest as manifest_mod
from data_prep.manifest import (
    LIST_FORMAT,
    MANIFEST_NAME,
    SHARD_TABLE_NAME,
    ShardTable,
    read_manifest,
    write_manifest,
)
from dist_llm.data.shards import TokenShards
from dist_llm.errors import DataError
from tests.unit.shard_data import counting_docs, make_dataset, to_list_format


@pytest.fixture
def dataset(tmp_path) -> str:
    return make_dataset(
        str(tmp_path / "ds"), {"train": counting_docs(40), "validation": counting_docs(9)}, shard_tokens=50
    )


def test_header_is_small_and_names_the_verified_table(dataset):
    header = json.loads(open(os.path.join(dataset, MANIFEST_NAME)).read())
    table = open(os.path.join(dataset, SHARD_TABLE_NAME), "rb").read()
    assert header["shard_table"] == {
        "path": SHARD_TABLE_NAME,
        "bytes": len(table),
        "sha256": hashlib.sha256(table).hexdigest(),
    }
    manifest = read_manifest(dataset)
    train = manifest.shards["train"]
    assert header["splits"]["train"] == {
        "docs": 40,
        "tokens": int(train.tokens.sum()),
        "num_shards": len(train),
    }
    assert train.tokens.dtype == np.int64 and train.path(0).endswith(".arrow") and len(train.sha256(0)) == 64


def test_the_table_is_written_before_the_header(dataset, monkeypatch):
    manifest = read_manifest(dataset)
    written = []
    real_write = manifest_mod.store.write_bytes
    monkeypatch.setattr(
        manifest_mod.store,
        "write_bytes",
        lambda uri, *a, **k: (written.append(uri), real_write(uri, *a, **k)),
    )
    write_manifest(dataset, manifest.header, manifest.shards)
    assert [os.path.basename(uri) for uri in written] == [SHARD_TABLE_NAME, MANIFEST_NAME]


def test_a_changed_or_missing_table_is_refused_naming_it(dataset):
    path = os.path.join(dataset, SHARD_TABLE_NAME)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(DataError, match="does not match the size and sha256") as err:
        read_manifest(dataset)
    assert path in str(err.value)
    os.remove(path)
    with pytest.raises(DataError, match="shard table named by manifest.json is missing") as err:
        TokenShards(dataset, "train")
    assert path in str(err.value)


def test_a_dataset_of_the_earlier_list_format_still_loads(dataset):
    before = read_manifest(dataset)
    shards = TokenShards(dataset, "train")
    stream, fingerprint = shards.read(0, shards.num_tokens), shards.fingerprint
    to_list_format(dataset)
    assert not os.path.exists(os.path.join(dataset, SHARD_TABLE_NAME))
    assert json.loads(open(os.path.join(dataset, MANIFEST_NAME)).read())["format"] == LIST_FORMAT

    old = read_manifest(dataset)
    assert old.header["splits"] == before.header["splits"]
    for split in ("train", "validation"):
        a, b = old.shards[split], before.shards[split]
        assert [a.path(i) for i in range(len(a))] == [b.path(i) for i in range(len(b))]
        assert a.checksums.equals(b.checksums)
        assert all(np.array_equal(getattr(a, c), getattr(b, c)) for c in ("docs", "tokens", "bytes"))
    again = TokenShards(dataset, "train")
    assert np.array_equal(again.read(0, again.num_tokens), stream) and again.fingerprint == fingerprint


def test_an_earlier_format_shard_entry_without_a_key_is_named(dataset):
    to_list_format(dataset)
    path = os.path.join(dataset, MANIFEST_NAME)
    header = json.loads(open(path).read())
    del header["splits"]["train"]["shards"][1]["sha256"]
    open(path, "w").write(json.dumps(header))
    with pytest.raises(DataError, match=r"missing key 'splits\.train\.shards\[1\]\.sha256'"):
        read_manifest(dataset)


def _synthetic_table(num_shards: int, first: int) -> ShardTable:
    """Shard rows as prep names them, built column-wise (no data files behind them)."""
    index = np.arange(first, first + num_shards)
    paths = pa.array([f"units/u-{i // 16:06d}/train-{i % 16:03d}.arrow" for i in index.tolist()])
    checksums = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(32), num_shards, [None, pa.py_buffer(np.random.default_rng(first).bytes(32 * num_shards))]
    )
    tokens = np.full(num_shards, 1_048_576, dtype=np.int64) + index % 1000
    return ShardTable(paths, checksums, tokens // 400, tokens, tokens * 4 + 1024)


def test_a_million_shards_open_as_arrays(tmp_path, dataset):
    """What a rank does at start: read the manifest and open the train split. Python-heap allocations
    stay a few arrays (the cumulative offsets), never an object per shard."""
    header = read_manifest(dataset).header
    data_dir = str(tmp_path / "big")
    write_manifest(
        data_dir,
        header,
        {"train": _synthetic_table(1_000_000, 0), "validation": _synthetic_table(10_000, 10**6)},
    )
    tracemalloc.start()
    started = time.perf_counter()
    shards = TokenShards(data_dir, "train")
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(shards.table) == 1_000_000 and shards.table.path(999_999) == "units/u-062499/train-015.arrow"
    assert shards.num_tokens == int(shards.table.tokens.sum())
    assert peak < 24 * 2**20, f"{peak / 2**20:.1f} MiB allocated"
    assert seconds < 5, f"{seconds:.2f} s"  # about 0.2 s alone; generous for a loaded CI machine
