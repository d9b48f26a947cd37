"""Prep writing straight to a real S3-compatible store (SeaweedFS): shards, records and the
manifest are objects in the bucket, the manifest comes last, and a re-run resumes from there."""

from __future__ import annotations

import argparse
import json
import time

import pyarrow as pa
import pytest
import s3fs

from data_prep.checks import checks_path
from data_prep.cli import add_arguments, run
from data_prep.manifest import SHARD_TABLE_NAME, read_manifest
from dist_llm.errors import DataError
from tests.data_prep.conftest import make_docs, write_jsonl


def prep(out: str, *argv: object) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args([str(a) for a in argv] + ["--out", out, "--quiet"])) == 0


def test_prep_writes_shards_to_s3_and_resumes_there(tmp_path, s3_env):
    corpus = write_jsonl(tmp_path / "docs.jsonl", make_docs(300))
    out = f"s3://{s3_env.new_bucket()}/datasets/docs"
    args = (corpus, "--vocab-size", 400, "--unit-mb", 0.01, "--workers", 2)
    prep(out, *args)
    local = tmp_path / "local"
    prep(str(local), *args)

    manifest = read_manifest(out)
    fs = s3fs.S3FileSystem()
    bucket_path = out.removeprefix("s3://")
    names = set(fs.find(bucket_path))
    for table in manifest.shards.values():
        for i in range(len(table)):
            key = f"{bucket_path}/{table.path(i)}"
            assert key in names and fs.size(key) == table.bytes[i]
            # The same bytes as a local run of the same command: s3 is only a destination.
            assert fs.cat_file(key) == (local / table.path(i)).read_bytes()
            checks = checks_path(table.path(i))
            assert fs.cat_file(f"{bucket_path}/{checks}") == (local / checks).read_bytes()
    assert {f"{bucket_path}/tokenizer.model", f"{bucket_path}/prep.json"} <= names
    assert fs.cat_file(f"{bucket_path}/{SHARD_TABLE_NAME}") == (local / SHARD_TABLE_NAME).read_bytes()
    assert manifest.header["splits"] == json.loads((local / "manifest.json").read_text())["splits"]

    # Resume: every unit is reused after checking its checksums; removing one unit's record
    # redoes exactly that unit.
    def stamps() -> dict[str, object]:
        fs.invalidate_cache()
        return {p: fs.info(p)["LastModified"] for p in fs.find(f"{bucket_path}/units")}

    before = stamps()
    fs.rm_file(f"{bucket_path}/units/u-000001.json")
    time.sleep(1.1)  # LastModified has one-second resolution
    prep(out, *args)
    changed = {p.split("/units/")[1].split("/")[0] for p, t in stamps().items() if before.get(p) != t}
    assert changed == {"u-000001", "u-000001.json"}
    again = read_manifest(out)
    assert again.header["splits"] == manifest.header["splits"]
    assert again.header["shard_table"] == manifest.header["shard_table"]
    train = again.shards["train"]
    table = pa.ipc.open_file(pa.py_buffer(fs.cat_file(f"{bucket_path}/{train.path(0)}"))).read_all()
    assert table.num_rows == train.docs[0]


def test_unreachable_output_store_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    corpus = write_jsonl(tmp_path / "docs.jsonl", make_docs(20))
    with pytest.raises(DataError, match=r"s3://nowhere/data.*127\.0\.0\.1:9"):
        prep("s3://nowhere/data", corpus, "--vocab-size", 300)
