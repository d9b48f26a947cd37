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
from data_prep.checks import CHUNK_BYTES
from data_prep.manifest import (
    FORMAT,
    LIST_FORMAT,
    MANIFEST_NAME,
    SHARD_TABLE_NAME,
    WHOLE_SHARD_FORMAT,
    ShardTable,
    read_manifest,
    token_dtype,
    write_manifest,
)
from dist_llm.data.shards import TokenShards
from dist_llm.errors import DataError
from tests.unit.shard_data import counting_docs, make_dataset, to_list_format, to_whole_shard_format


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
        "fingerprint": TokenShards(dataset, "train").fingerprint,
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


def test_the_fingerprint_is_read_from_the_header_not_computed_at_open(dataset, monkeypatch):
    manifest = read_manifest(dataset)
    fingerprints = {
        split: manifest.header["splits"][split]["fingerprint"] for split in ("train", "validation")
    }
    assert len(set(fingerprints.values())) == 2 and all(len(f) == 16 for f in fingerprints.values())
    monkeypatch.setattr(manifest_mod, "_fingerprint", lambda *a: pytest.fail("hashed shard entries at open"))
    for split, expected in fingerprints.items():
        assert TokenShards(dataset, split).fingerprint == expected


def test_a_dataset_of_the_earlier_list_format_still_loads(dataset):
    """int32 shards listed inside manifest.json: the same stream, and the fingerprint earlier versions
    computed (so a run resumed on such a dataset accepts it)."""
    before = read_manifest(dataset)
    shards = TokenShards(dataset, "train")
    stream = shards.read(0, shards.num_tokens)
    to_list_format(dataset)
    assert not os.path.exists(os.path.join(dataset, SHARD_TABLE_NAME))
    header = json.loads(open(os.path.join(dataset, MANIFEST_NAME)).read())
    assert (header["format"], header["token_dtype"]) == (LIST_FORMAT, "int32")

    old = read_manifest(dataset)
    for split in ("train", "validation"):  # fingerprints differ: int32 shards have other checksums
        totals = ("docs", "tokens", "num_shards")
        assert [old.header["splits"][split][k] for k in totals] == [
            before.header["splits"][split][k] for k in totals
        ]
    assert old.token_type == pa.int32()
    for split in ("train", "validation"):
        a, b = old.shards[split], before.shards[split]
        assert [a.path(i) for i in range(len(a))] == [b.path(i) for i in range(len(b))]
        assert np.array_equal(a.docs, b.docs) and np.array_equal(a.tokens, b.tokens)
    again = TokenShards(dataset, "train")
    assert np.array_equal(again.read(0, again.num_tokens), stream)
    earlier = hashlib.sha256(header["tokenizer"]["sha256"].encode())
    for shard in header["splits"]["train"]["shards"]:
        earlier.update(shard["sha256"].encode())
    assert again.fingerprint == earlier.hexdigest()[:16]


def test_a_dataset_of_the_format_before_range_reads_still_loads(dataset):
    """A shard table without offsets and no checks files (`dist_llm.shards/2`): the same stream and
    fingerprint, and no offsets, so remote readers download its shards whole."""
    before = read_manifest(dataset)
    assert before.header["format"] == FORMAT and before.header["chunk_bytes"] == CHUNK_BYTES
    shards = TokenShards(dataset, "train")
    stream = shards.read(0, shards.num_tokens)
    to_whole_shard_format(dataset)
    old = read_manifest(dataset)
    assert old.header["format"] == WHOLE_SHARD_FORMAT and "chunk_bytes" not in old.header
    for split in ("train", "validation"):
        assert old.shards[split].values_offsets is None
        assert old.header["splits"][split] == before.header["splits"][split]
    again = TokenShards(dataset, "train")
    assert np.array_equal(again.read(0, again.num_tokens), stream) and again.fingerprint == shards.fingerprint


def test_an_earlier_format_shard_entry_without_a_key_is_named(dataset):
    to_list_format(dataset)
    path = os.path.join(dataset, MANIFEST_NAME)
    header = json.loads(open(path).read())
    del header["splits"]["train"]["shards"][1]["sha256"]
    open(path, "w").write(json.dumps(header))
    with pytest.raises(DataError, match=r"missing key 'splits\.train\.shards\[1\]\.sha256'"):
        read_manifest(dataset)


def test_ids_are_uint16_up_to_a_65536_token_vocabulary_and_round_trip(tmp_path):
    assert token_dtype(65_536) == np.uint16 and token_dtype(65_537) == np.uint32
    docs = [np.arange(0, 40_000), np.arange(40_000, 65_536), np.array([65_535, 0, 1])]
    small = make_dataset(str(tmp_path / "small"), {"train": docs}, shard_tokens=30_000, vocab_size=65_536)
    large = make_dataset(str(tmp_path / "large"), {"train": docs}, shard_tokens=30_000, vocab_size=65_537)
    stream = np.concatenate(docs)
    for data_dir, dtype in ((small, "uint16"), (large, "uint32")):
        manifest = read_manifest(data_dir)
        assert manifest.header["token_dtype"] == dtype
        shard = pa.ipc.open_file(os.path.join(data_dir, manifest.shards["train"].path(0))).schema
        assert shard.field("tokens").type == pa.list_(pa.type_for_alias(dtype))
        shards = TokenShards(data_dir, "train")
        assert np.array_equal(shards.read(0, shards.num_tokens), stream)
    ratio = (
        read_manifest(small).shards["train"].bytes.sum() / read_manifest(large).shards["train"].bytes.sum()
    )
    assert ratio < 0.51  # half the bytes (list offsets and file framing are a sliver)


def test_shards_of_another_dtype_than_the_manifest_says_are_refused(tmp_path):
    data_dir = make_dataset(str(tmp_path / "ds"), {"train": counting_docs(5)}, shard_tokens=50)
    manifest = read_manifest(data_dir)
    header = manifest.header | {"token_dtype": "uint16"}
    write_manifest(data_dir, header, manifest.shards)
    with pytest.raises(DataError, match="expected 'tokens: list<item: uint16>"):
        TokenShards(data_dir, "train").read(0, 1)


def _synthetic_table(num_shards: int, first: int) -> ShardTable:
    """Shard rows as prep names them, built column-wise (no data files behind them)."""
    index = np.arange(first, first + num_shards)
    paths = pa.array([f"units/u-{i // 16:06d}/train-{i % 16:03d}.arrow" for i in index.tolist()])
    checksums = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(32), num_shards, [None, pa.py_buffer(np.random.default_rng(first).bytes(32 * num_shards))]
    )
    tokens = np.full(num_shards, 1_048_576, dtype=np.int64) + index % 1000
    return ShardTable(paths, checksums, tokens // 400, tokens, tokens * 4 + 1024, np.full(num_shards, 1024))


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
    assert shards.num_tokens == int(shards.table.tokens.sum()) and len(shards.fingerprint) == 16
    assert peak < 24 * 2**20, f"{peak / 2**20:.1f} MiB allocated"
    assert seconds < 5, f"{seconds:.2f} s"  # about 0.2 s alone; generous for a loaded CI machine
