"""End-to-end prep: real tokenizer, real pool, real Arrow files; no mocks."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from data_prep.checks import CHUNK_BYTES, checks_path, chunk_checks
from data_prep.cli import add_arguments, run
from data_prep.filters import doc_hash, is_validation
from data_prep.manifest import SHARD_TABLE_NAME, Manifest, ShardTable, read_manifest, shard_schema
from data_prep.tokenizer import file_sha256, load_tokenizer
from dist_llm.errors import DataError

REPO = Path(__file__).resolve().parents[2]


def prep(out: Path, *argv: object) -> Manifest:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args([str(a) for a in argv] + ["--out", str(out), "--quiet"])) == 0
    return read_manifest(str(out))


def shard_rows(out: Path, table: ShardTable) -> list[list[int]]:
    rows = []
    for i in range(len(table)):
        rows.extend(pa.ipc.open_file(str(out / table.path(i))).read_all().column("tokens").to_pylist())
    return rows


def assert_range_layout(out: Path, table: ShardTable) -> None:
    """A reader that fetches bytes by range finds each shard's token ids where the table says, and
    the shard's checks file verifies them."""
    for i in range(len(table)):
        data = (out / table.path(i)).read_bytes()
        tokens = pa.ipc.open_file(pa.py_buffer(data)).read_all().column("tokens").combine_chunks().flatten()
        offset, size = int(table.values_offsets[i]), int(table.tokens[i]) * tokens.type.byte_width
        assert np.array_equal(
            np.frombuffer(data[offset : offset + size], tokens.type.to_pandas_dtype()), tokens
        )
        checks = (out / checks_path(table.path(i))).read_bytes()
        assert checks == chunk_checks(
            data[offset : offset + size], bytes.fromhex(table.sha256(i)), 0, CHUNK_BYTES
        )


def val(doc: str, fraction: float = 0.01) -> bool:
    return is_validation(doc_hash(doc), fraction)


def test_end_to_end_manifest_matches_files_and_decodes_back(tmp_path, corpus_jsonl, corpus_docs):
    out = tmp_path / "data"
    manifest = prep(
        out,
        corpus_jsonl,
        "--vocab-size",
        512,
        "--shard-tokens",
        2000,
        "--val-fraction",
        0.1,
        "--workers",
        2,
        "--unit-mb",
        0.01,
    )
    header = manifest.header
    # 512 tokens: ids fit uint16, half the bytes of uint32
    assert header["format"] == "dist_llm.shards/3" and header["token_dtype"] == "uint16"
    assert header["chunk_bytes"] == CHUNK_BYTES
    assert header["units"] > 2  # ~30 KB of JSONL in 10 KB units
    tok_meta = manifest.tokenizer
    assert tok_meta["path"] == "tokenizer.model" and tok_meta["kind"] == "sentencepiece"
    assert tok_meta["sha256"] == file_sha256(str(out / "tokenizer.model"))
    assert (tok_meta["vocab_size"], tok_meta["eos_id"], tok_meta["mask_id"]) == (512, 3, 4)
    assert (tok_meta["sep_id"], tok_meta["cls_id"], tok_meta["sentinel_ids"][:2]) == (5, 6, [7, 8])
    assert header["skipped"] == {"total": 0, "by_reason": {}}
    assert header["filters"]["docs_read"] == 300 and header["filters"]["removed"] == {"duplicate": 0}
    tok = load_tokenizer(str(out / tok_meta["path"]))

    expected = {
        "train": [d for d in corpus_docs if not val(d, 0.1)],
        "validation": [d for d in corpus_docs if val(d, 0.1)],
    }
    assert expected["validation"] and expected["train"]
    for split, shards in manifest.shards.items():
        for i in range(len(shards)):
            path = out / shards.path(i)
            assert shards.path(i).startswith("units/u-") and shards.path(i).endswith(".arrow")
            assert path.stat().st_size == shards.bytes[i]
            assert file_sha256(str(path)) == shards.sha256(i)
            table = pa.ipc.open_file(str(path)).read_all()
            assert table.schema.equals(shard_schema(pa.uint16()))
            lengths = [len(row) for row in table.column("tokens").to_pylist()]
            assert (len(lengths), sum(lengths)) == (shards.docs[i], shards.tokens[i])
            assert shards.tokens[i] - lengths[-1] < 2000  # closes once the target is reached
        assert_range_layout(out, shards)
        rows = shard_rows(out, shards)
        block = header["splits"][split]
        assert block["docs"] == len(rows) == len(expected[split]) and block["num_shards"] == len(shards)
        assert block["tokens"] == sum(map(len, rows))
        assert all(row[-1] == tok.eos_id for row in rows)
        assert [tok.decode(row[:-1]) for row in rows] == expected[split]
    assert not list(out.rglob("*.tmp"))


def test_token_stream_is_identical_for_any_worker_count_and_unit_size(tmp_path, corpus_jsonl, sp_model):
    streams = {}
    for workers, unit_mb in ((1, 0), (2, 0), (2, 0.004), (1, 0.02)):
        out = tmp_path / f"w{workers}-{unit_mb}"
        manifest = prep(
            out,
            corpus_jsonl,
            "--tokenizer",
            sp_model,
            "--shard-tokens",
            1500,
            "--workers",
            workers,
            "--unit-mb",
            unit_mb,
        )
        streams[workers, unit_mb] = {s: shard_rows(out, t) for s, t in manifest.shards.items()}
    first = streams[1, 0]
    assert all(stream == first for stream in streams.values())
    # Same plan, different worker count: byte-identical files.
    for rel in (
        "units/u-000000/train-000.arrow",
        "units/u-000000/train-000.checks",
        SHARD_TABLE_NAME,
        "manifest.json",
    ):
        a, b = (tmp_path / "w1-0" / rel).read_bytes(), (tmp_path / "w2-0" / rel).read_bytes()
        assert a == b or rel == "manifest.json" and json.loads(a)["splits"] == json.loads(b)["splits"]


def test_add_bos_and_val_fraction_zero(tmp_path, corpus_jsonl, sp_model):
    out = tmp_path / "bos"
    manifest = prep(out, corpus_jsonl, "--tokenizer", sp_model, "--add-bos", "--val-fraction", 0)
    rows = shard_rows(out, manifest.shards["train"])
    assert len(rows) == 300 and all(r[0] == 2 and r[-1] == 3 for r in rows)
    validation = manifest.header["splits"]["validation"]
    assert (validation["docs"], validation["tokens"], validation["num_shards"]) == (0, 0, 0)


def test_small_corpus_still_gets_one_validation_doc(tmp_path, sp_model, corpus_docs, jsonl_file):
    docs = [d for d in corpus_docs if not val(d)][:3]
    out = tmp_path / "small"
    manifest = prep(out, jsonl_file("s.jsonl", docs), "--tokenizer", sp_model)
    tok = load_tokenizer(sp_model)
    assert [tok.decode(r[:-1]) for r in shard_rows(out, manifest.shards["train"])] == docs[:2]
    assert [tok.decode(r[:-1]) for r in shard_rows(out, manifest.shards["validation"])] == docs[2:]


def make_bad_inputs(root: Path, good_docs: list[str]) -> list[Path]:
    root.mkdir()
    (root / "good.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in good_docs))
    (root / "bad_utf8.txt").write_bytes(b"caf\xe9\n")
    (root / "empty.txt").write_bytes(b"")
    (root / "broken.jsonl").write_text('{"text": "ok doc"}\n{not json}\n{"body": "x"}\n', encoding="utf-8")
    return [root, root / "missing.jsonl"]


def test_skip_counts_bad_input_in_manifest(tmp_path, corpus_docs, sp_model):
    inputs = make_bad_inputs(tmp_path / "in", corpus_docs[:50])
    manifest = prep(tmp_path / "out", *inputs, "--tokenizer", sp_model, "--on-error", "skip")
    assert manifest.header["skipped"] == {
        "total": 5,
        "by_reason": {
            "bad_json": 1,
            "empty_file": 1,
            "invalid_utf8": 1,
            "missing_field": 1,
            "missing_path": 1,
        },
    }
    docs = sum(block["docs"] for block in manifest.header["splits"].values())
    assert docs == 51  # 50 good docs + "ok doc"

    with pytest.raises(DataError, match=r"missing\.jsonl: input path does not exist"):
        prep(tmp_path / "out2", *inputs, "--tokenizer", sp_model)  # paths are checked first
    with pytest.raises(DataError, match=r"bad_utf8\.txt:1: invalid UTF-8"):
        prep(tmp_path / "out3", inputs[0], "--tokenizer", sp_model)
    assert not (tmp_path / "out3" / "manifest.json").exists()


def test_filters_remove_and_count(tmp_path, sp_model, jsonl_file):
    docs = ["short", "a" * 50, "Ｆｕｌｌｗｉｄｔｈ text here", "b" * 50, "a" * 50, "c" * 5000]
    out = tmp_path / "f"
    manifest = prep(
        out,
        jsonl_file("f.jsonl", docs),
        "--tokenizer",
        sp_model,
        "--val-fraction",
        0,
        "--min-chars",
        10,
        "--max-chars",
        1000,
        "--normalize",
        "NFKC",
    )
    filters = manifest.header["filters"]
    assert filters["removed"] == {"duplicate": 1, "max_chars": 1, "min_chars": 1}
    assert filters["docs_read"] == 6 and filters["normalize"] == "NFKC"
    tok = load_tokenizer(sp_model)
    texts = [tok.decode(r[:-1]) for r in shard_rows(out, manifest.shards["train"])]
    assert texts == ["a" * 50, "Fullwidth text here", "b" * 50]

    counts = [len(ids) for ids in tok.encode_batch(docs)]
    low, high = sorted(counts)[1], sorted(counts)[-2]
    manifest = prep(
        tmp_path / "t",
        jsonl_file("t.jsonl", docs),
        "--tokenizer",
        sp_model,
        "--val-fraction",
        0,
        "--min-tokens",
        low,
        "--max-tokens",
        high,
        "--dedup",
        "none",
    )
    assert manifest.header["filters"]["removed"] == {
        "duplicate": 0,
        "min_tokens": sum(c < low for c in counts),
        "max_tokens": sum(c > high for c in counts),
    }
    assert manifest.header["splits"]["train"]["docs"] == sum(low <= c <= high for c in counts)


def test_dedup_across_units_keeps_the_first_copy(tmp_path, sp_model, corpus_docs, jsonl_file):
    # The same 40 documents in three files, plus copies inside one file: every copy after the
    # first in corpus order goes, wherever it is, for any unit size.
    a = jsonl_file("a.jsonl", corpus_docs[:40] + corpus_docs[:5])
    b = jsonl_file("b.jsonl", corpus_docs[40:60] + corpus_docs[10:40])
    c = jsonl_file("c.jsonl", corpus_docs[:60])
    streams, merged = [], 0
    for unit_mb in (0, 0.002):
        out = tmp_path / f"d{unit_mb}"
        manifest = prep(
            out, a, b, c, "--tokenizer", sp_model, "--unit-mb", unit_mb, "--workers", 2, "--val-fraction", 0
        )
        assert manifest.header["filters"]["removed"]["duplicate"] == 5 + 30 + 60
        train = manifest.shards["train"]
        merged += sum(train.path(i).endswith(".merged.arrow") for i in range(len(train)))
        assert_range_layout(out, train)  # shards rewritten without the copies come with new checks
        streams.append({s: shard_rows(out, t) for s, t in manifest.shards.items()})
    assert streams[0] == streams[1] and merged > 0
    tok = load_tokenizer(sp_model)
    kept = [tok.decode(r[:-1]) for r in streams[0]["train"]]
    assert kept == corpus_docs[:60]


def test_hf_tokenizer_dir_is_copied_and_recorded(tmp_path, corpus_jsonl, corpus_docs, hf_tokenizer_dir):
    out = tmp_path / "out"
    manifest = prep(out, corpus_jsonl, "--tokenizer", hf_tokenizer_dir, "--workers", 2)
    meta = manifest.tokenizer
    assert meta["kind"] == "hf" and meta["path"] == "tokenizer"
    tok = load_tokenizer(str(out / "tokenizer"))
    assert meta["sha256"] == tok.sha256 == load_tokenizer(str(hf_tokenizer_dir)).sha256
    rows = shard_rows(out, manifest.shards["train"])
    train_docs = [d for d in corpus_docs if not val(d)]
    assert rows[-1][-1] == meta["eos_id"] == tok.eos_id
    assert tok.decode(rows[0][:-1]) == train_docs[0]


def test_read_manifest_names_file_and_key(tmp_path, corpus_jsonl, sp_model):
    with pytest.raises(DataError, match="manifest.json: not found"):
        read_manifest(str(tmp_path))
    out = tmp_path / "out"
    prep(out, corpus_jsonl, "--tokenizer", sp_model)
    header = json.loads((out / "manifest.json").read_text())
    del header["splits"]["train"]["num_shards"]
    (out / "manifest.json").write_text(json.dumps(header))
    with pytest.raises(DataError, match=r"manifest\.json: missing key 'splits\.train\.num_shards'"):
        read_manifest(str(out))


def test_module_entry_point_reports_errors_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "data_prep", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'nope.txt'}: input path")


def test_progress_in_a_log_file_has_an_eta(tmp_path, corpus_jsonl, sp_model, monkeypatch, warnings_log):
    """Without a terminal (SLURM logs, nohup) the bar is off and progress lines with ETA are logged."""
    import logging

    from data_prep import pipeline

    monkeypatch.setattr(pipeline, "PROGRESS_LOG_S", 0.0)
    warnings_log.set_level(logging.INFO, logger="dist_llm")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = [
        str(corpus_jsonl),
        "--tokenizer",
        sp_model,
        "--unit-mb",
        "0.005",
        "--workers",
        "1",
        "--out",
        str(tmp_path / "data"),
    ]
    assert run(parser.parse_args(args)) == 0
    lines = [r.getMessage() for r in warnings_log.records if "ETA" in r.getMessage()]
    line = re.compile(r"prep: \d+% of [\d.]+ MB \| [\d.]+ MB/s \| ETA \d+m\d\ds$")
    assert lines and all(line.match(m) for m in lines)
