"""Exact dedup partitioned by hash: the keys files, the pieces, and merges spread over parts
that must equal one process deduplicating the whole corpus."""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from data_prep.cli import add_arguments, run
from data_prep.dedup import (
    BUCKET_BITS,
    BUCKETS,
    keys_file,
    later_copies,
    piece_buckets,
    piece_count,
    read_keys,
)
from data_prep.filters import doc_hash, is_validation
from data_prep.manifest import SHARD_TABLE_NAME, read_manifest
from data_prep.tokenizer import load_tokenizer
from dist_llm.errors import DataError

REPO = Path(__file__).resolve().parents[2]


def prep(out: Path, *argv: object) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args([str(a) for a in argv] + ["--out", str(out), "--quiet"])) == 0


def write_keys(root: Path, name: str, texts: list[str]) -> dict:
    data, bits = keys_file([doc_hash(t) for t in texts])
    (root / name).write_bytes(data)
    return {"path": name, "bits": bits}


def bucket(text: str) -> int:
    return int.from_bytes(doc_hash(text)[:8], "big") >> (64 - BUCKET_BITS)


def test_keys_file_range_reads_return_exactly_their_buckets(tmp_path):
    rng = random.Random(0)
    for count in (0, 1, 63, 64, 1000, 20_000):
        texts = [f"doc {count} {i}" for i in range(count)]
        entry = write_keys(tmp_path, f"{count}.keys", texts)
        assert entry["bits"] == min(BUCKET_BITS, (count // 64).bit_length())
        whole = read_keys(str(tmp_path), entry, 0, BUCKETS)
        assert sorted(whole["row"].tolist()) == list(range(count))
        assert [doc_hash(texts[r]) for r in whole["row"]] == sorted(doc_hash(t) for t in texts)
        ranges = [(0, 1), (BUCKETS - 1, BUCKETS)] + [
            sorted(rng.sample(range(BUCKETS + 1), 2)) for _ in range(20)
        ]
        for first, stop in ranges:
            got = read_keys(str(tmp_path), entry, first, stop)["row"].tolist()
            want = sorted(
                (i for i, t in enumerate(texts) if first <= bucket(t) < stop),
                key=lambda i: doc_hash(texts[i]),
            )
            assert got == want


def test_later_copies_keep_the_first_copy_in_corpus_order(tmp_path):
    units = [["a", "b"], [], ["c", "a"], ["b", "c", "d"]]
    keys = [
        read_keys(str(tmp_path), write_keys(tmp_path, f"u{i}", u), 0, BUCKETS) for i, u in enumerate(units)
    ]
    drop_units, drop_rows = later_copies(keys)
    assert list(zip(drop_units.tolist(), drop_rows.tolist())) == [(2, 1), (3, 0), (3, 1)]
    assert [len(a) for a in later_copies([])] == [0, 0]


def test_pieces_cover_the_buckets_and_grow_with_the_keys_not_in_size():
    assert piece_count(0) == piece_count(10) == 1
    assert piece_count(10**6, 1000) == 1000 and piece_count(10**12, 1000) == BUCKETS
    for pieces in (1, 3, 1000, BUCKETS):
        spans = [piece_buckets(c, pieces) for c in range(pieces)]
        assert spans[0][0] == 0 and spans[-1][1] == BUCKETS
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(spans, spans[1:]))
    with pytest.raises(DataError, match="--dedup-piece-keys"):
        piece_count(5, 0)


def test_bucketed_dedup_over_parts_equals_single_process_dedup(tmp_path, sp_model, corpus_docs, jsonl_file):
    # 1,500 documents drawn from 200 distinct ones, over 3 files cut into ~20 units: nearly every
    # copy sits in another unit than its first, in both splits.
    rng = random.Random(0)
    texts = [corpus_docs[rng.randrange(200)] for _ in range(1500)]
    files = [jsonl_file(f"f{i}.jsonl", texts[i * 500 : (i + 1) * 500]) for i in range(3)]
    common = (
        *files,
        "--tokenizer",
        sp_model,
        "--unit-mb",
        0.02,
        "--val-fraction",
        0.2,
        "--shard-tokens",
        400,
    )

    single = tmp_path / "single"
    prep(single, *common, "--workers", 1)
    reference = read_manifest(str(single))
    assert reference.header["units"] >= 10
    tok = load_tokenizer(sp_model)
    first_copies = list(dict.fromkeys(texts))
    for split, table in reference.shards.items():
        rows = []
        for i in range(len(table)):
            rows += pa.ipc.open_file(str(single / table.path(i))).read_all().column("tokens").to_pylist()
        expected = [t for t in first_copies if is_validation(doc_hash(t), 0.2) == (split == "validation")]
        assert [tok.decode(r[:-1]) for r in rows] == expected
    assert reference.header["filters"]["removed"]["duplicate"] == 1500 - len(first_copies)

    # Three machines merging at once, each with two workers, the hash space cut into ~40 pieces.
    out = tmp_path / "parts"
    prep(out, *common, "--workers", 2, "--no-merge")
    assert not (out / "manifest.json").exists()
    merges = [
        subprocess.Popen(
            [sys.executable, "-m", "data_prep", "merge", "--out", str(out), "--num-parts", "3"]
            + ["--part", str(part), "--workers", "2", "--dedup-piece-keys", "5"],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for part in range(3)
    ]
    for proc in merges:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert len(list((out / "merge").glob("drops-*.bin"))) > 30
    parted = read_manifest(str(out))
    assert (out / SHARD_TABLE_NAME).read_bytes() == (single / SHARD_TABLE_NAME).read_bytes()
    for table in parted.shards.values():
        for i in range(len(table)):
            assert (out / table.path(i)).read_bytes() == (single / table.path(i)).read_bytes()
    assert parted.header["filters"] == reference.header["filters"]


def test_merge_refuses_a_damaged_keys_file(tmp_path, sp_model, corpus_docs, jsonl_file):
    out = tmp_path / "out"
    prep(out, jsonl_file("a.jsonl", corpus_docs[:50] * 2), "--tokenizer", sp_model, "--no-merge")
    keys = next((out / "units").rglob("dedup.keys"))
    data = bytearray(keys.read_bytes())
    data[-1] ^= 0xFF
    keys.write_bytes(bytes(data))
    with pytest.raises(DataError, match="dedup.keys: missing or does not match"):
        prep(out, "merge")
    assert not (out / "manifest.json").exists()
