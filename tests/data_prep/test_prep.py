"""End-to-end prep: real tokenizer, real pool, real Arrow files; no mocks."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from data_prep.cli import add_arguments, run
from data_prep.manifest import read_manifest
from data_prep.tokenizer import file_sha256, load_tokenizer
from data_prep.writer import SCHEMA, is_validation
from dist_llm.errors import DataError

REPO = Path(__file__).resolve().parents[2]


def prep(out: Path, *argv: object) -> dict:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args([str(a) for a in argv] + ["--out", str(out), "--quiet"])) == 0
    return read_manifest(str(out))


def shard_rows(out: Path, split_block: dict) -> list[list[int]]:
    rows = []
    for shard in split_block["shards"]:
        rows.extend(pa.ipc.open_file(str(out / shard["path"])).read_all().column("tokens").to_pylist())
    return rows


def test_end_to_end_manifest_matches_files_and_decodes_back(tmp_path, corpus_jsonl, corpus_docs):
    out = tmp_path / "data"
    manifest = prep(out, corpus_jsonl, "--vocab-size", 512, "--shard-tokens", 2000,
                    "--val-fraction", 0.1, "--workers", 2)
    assert manifest["format"] == "dist_llm.shards/1" and manifest["token_dtype"] == "int32"
    tok_meta = manifest["tokenizer"]
    assert tok_meta["path"] == "tokenizer.model" and tok_meta["kind"] == "sentencepiece"
    assert tok_meta["sha256"] == file_sha256(str(out / "tokenizer.model"))
    assert (tok_meta["vocab_size"], tok_meta["eos_id"], tok_meta["mask_id"]) == (512, 3, 4)
    assert manifest["skipped"] == {"total": 0, "by_reason": {}}
    tok = load_tokenizer(str(out / tok_meta["path"]))

    expected = {
        "train": [d for d in corpus_docs if not is_validation(d, 0.1)],
        "validation": [d for d in corpus_docs if is_validation(d, 0.1)],
    }
    assert expected["validation"] and expected["train"]
    for split, block in manifest["splits"].items():
        assert len(block["shards"]) > (1 if split == "train" else 0)
        for index, shard in enumerate(block["shards"]):
            path = out / shard["path"]
            assert shard["path"] == f"{split}/shard-{index:05d}.arrow"
            assert path.stat().st_size == shard["bytes"]
            assert file_sha256(str(path)) == shard["sha256"]
            table = pa.ipc.open_file(str(path)).read_all()
            assert table.schema.equals(SCHEMA)
            lengths = [len(row) for row in table.column("tokens").to_pylist()]
            assert (len(lengths), sum(lengths)) == (shard["docs"], shard["tokens"])
            if index < len(block["shards"]) - 1:  # only the last shard may be short
                assert shard["tokens"] >= 2000 and shard["tokens"] - lengths[-1] < 2000
        rows = shard_rows(out, block)
        assert block["docs"] == len(rows) == len(expected[split])
        assert block["tokens"] == sum(map(len, rows))
        assert all(row[-1] == tok.eos_id for row in rows)
        assert [tok.decode(row[:-1]) for row in rows] == expected[split]
    assert not list(out.rglob("*.tmp"))


def test_output_is_identical_for_any_worker_count(tmp_path, corpus_jsonl):
    manifests = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        manifests[workers] = prep(out, corpus_jsonl, "--vocab-size", 512, "--shard-tokens", 1500,
                                  "--workers", workers)
    for m in manifests.values():
        del m["args"], m["created_unix"]
    assert manifests[1] == manifests[2]
    root = tmp_path / "w1"
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert len(files) > 4  # tokenizer + several shards
    for rel in files:
        assert (tmp_path / "w1" / rel).read_bytes() == (tmp_path / "w2" / rel).read_bytes(), rel


def test_add_bos_and_val_fraction_zero(tmp_path, corpus_jsonl, sp_model):
    out = tmp_path / "bos"
    manifest = prep(out, corpus_jsonl, "--tokenizer", sp_model, "--add-bos", "--val-fraction", 0)
    rows = shard_rows(out, manifest["splits"]["train"])
    assert len(rows) == 300 and all(r[0] == 2 and r[-1] == 3 for r in rows)
    assert manifest["splits"]["validation"] == {"docs": 0, "tokens": 0, "shards": []}


def test_small_corpus_still_gets_one_validation_doc(tmp_path, sp_model, corpus_docs, jsonl_file):
    docs = [d for d in corpus_docs if not is_validation(d, 0.01)][:3]
    out = tmp_path / "small"
    manifest = prep(out, jsonl_file("s.jsonl", docs), "--tokenizer", sp_model)
    tok = load_tokenizer(sp_model)
    assert [tok.decode(r[:-1]) for r in shard_rows(out, manifest["splits"]["train"])] == docs[:2]
    assert [tok.decode(r[:-1]) for r in shard_rows(out, manifest["splits"]["validation"])] == docs[2:]


def make_bad_inputs(root: Path, good_docs: list[str]) -> list[Path]:
    root.mkdir()
    (root / "good.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in good_docs))
    (root / "bad_utf8.txt").write_bytes(b"caf\xe9\n")
    (root / "empty.txt").write_bytes(b"")
    (root / "blank.txt").write_text("   \n", encoding="utf-8")
    (root / "broken.jsonl").write_text('{"text": "ok doc"}\n{not json}\n{"body": "x"}\n', encoding="utf-8")
    return [root, root / "missing.jsonl"]


def test_skip_counts_bad_input_in_manifest(tmp_path, corpus_docs, sp_model):
    inputs = make_bad_inputs(tmp_path / "in", corpus_docs[:50])
    manifest = prep(tmp_path / "out", *inputs, "--tokenizer", sp_model, "--on-error", "skip")
    assert manifest["skipped"] == {
        "total": 6,
        "by_reason": {"bad_json": 1, "blank_document": 1, "empty_file": 1, "invalid_utf8": 1,
                      "missing_field": 1, "missing_path": 1},
    }
    docs = sum(block["docs"] for block in manifest["splits"].values())
    assert docs == 51  # 50 good docs + "ok doc"

    with pytest.raises(DataError, match=r"missing\.jsonl: input path does not exist"):
        prep(tmp_path / "out", *inputs, "--tokenizer", sp_model)  # paths are checked first
    assert not (tmp_path / "out" / "manifest.json").exists()
    with pytest.raises(DataError, match=r"bad_utf8\.txt:1: invalid UTF-8"):
        prep(tmp_path / "out", inputs[0], "--tokenizer", sp_model)


def test_failed_run_leaves_no_manifest_or_stale_shards(tmp_path, corpus_docs, sp_model, jsonl_file):
    out = tmp_path / "out"
    first = prep(out, jsonl_file("a.jsonl", corpus_docs), "--tokenizer", sp_model, "--shard-tokens", 500)
    assert len(first["splits"]["train"]["shards"]) > 3 and (out / "manifest.json").exists()
    bad = tmp_path / "b.jsonl"
    bad.write_text(jsonl_file("tmp.jsonl", corpus_docs[:100]).read_text() + "{oops\n")
    with pytest.raises(DataError, match=rf"{bad}:101: malformed JSON"):
        prep(out, bad, "--tokenizer", sp_model, "--shard-tokens", 500, "--workers", 2)
    assert not (out / "manifest.json").exists()
    # Shards of the earlier run are gone too, so nothing stale can be mistaken for current.
    assert len(list((out / "train").glob("*.arrow"))) < len(first["splits"]["train"]["shards"])


def test_sigkill_mid_run_leaves_no_manifest(tmp_path, corpus_jsonl, sp_model):
    out = tmp_path / "out"
    prep(out, corpus_jsonl, "--tokenizer", sp_model)
    fifo = tmp_path / "stream.txt"
    os.mkfifo(fifo)
    hold = os.open(fifo, os.O_RDWR)  # keeps a writer open, so prep blocks reading mid-run
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "data_prep", str(corpus_jsonl), str(fifo), "--out", str(out),
             "--tokenizer", sp_model, "--workers", "1", "--quiet"],
            cwd=REPO, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while (out / "manifest.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.write(hold, b"partial document text\n")
        time.sleep(0.3)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        os.close(hold)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()


def test_hf_tokenizer_dir_is_copied_and_recorded(tmp_path, corpus_jsonl, corpus_docs, hf_tokenizer_dir):
    hf_dir = hf_tokenizer_dir
    out = tmp_path / "out"
    manifest = prep(out, corpus_jsonl, "--tokenizer", hf_dir, "--workers", 2)
    meta = manifest["tokenizer"]
    assert meta["kind"] == "hf" and meta["path"] == "tokenizer"
    assert (out / "tokenizer").is_dir()
    tok = load_tokenizer(str(out / "tokenizer"))
    assert meta["sha256"] == tok.sha256 == load_tokenizer(str(hf_dir)).sha256
    rows = shard_rows(out, manifest["splits"]["train"])
    train_docs = [d for d in corpus_docs if not is_validation(d, 0.01)]
    assert rows[-1][-1] == meta["eos_id"] == tok.eos_id
    assert tok.decode(rows[0][:-1]) == train_docs[0]


def test_read_manifest_names_file_and_key(tmp_path, corpus_jsonl, sp_model):
    with pytest.raises(DataError, match="manifest.json: not found"):
        read_manifest(str(tmp_path))
    out = tmp_path / "out"
    prep(out, corpus_jsonl, "--tokenizer", sp_model)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["splits"]["train"]["shards"][0]["sha256"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"manifest\.json: missing key 'splits\.train\.shards\[0\]\.sha256'"):
        read_manifest(str(out))


def test_module_entry_point_reports_errors_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "data_prep", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'nope.txt'}: input path")
