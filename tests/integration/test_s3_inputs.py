"""Prep inputs on a real S3-compatible store (SeaweedFS): listing, globbing and reading every
kind of input over s3:// gives the documents of the same files read locally, and a broken setup
(dead endpoint, wrong credentials, missing bucket) fails fast with one clear DataError."""

from __future__ import annotations

import gzip
import json
import time

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs

from data_prep.inputs import resolve_inputs
from data_prep.planner import plan_units
from data_prep.readers import ErrorPolicy, read_unit
from data_prep.units import ReadOptions
from dist_llm.errors import DataError
from tests.conftest import free_port


def read_all(paths, on_error="raise", unit_bytes=1 << 30):
    opts = ReadOptions(text_split="line")
    policy = ErrorPolicy(on_error)
    files = resolve_inputs(paths, opts, policy)
    return [d for u in plan_units(files, unit_bytes, opts) for d in read_unit(u, opts, policy)], files, policy


@pytest.fixture
def corpus(tmp_path):
    """One file of every kind, plus a hidden one that must be ignored."""
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "a.jsonl").write_text("".join(json.dumps({"text": f"json {i} é"}) + "\n" for i in range(400)))
    (root / "b.txt").write_text("".join(f"line {i}\r\n\n" for i in range(300)))
    (root / "c.jsonl.gz").write_bytes(gzip.compress(b'{"text": "gz one"}\n{"text": "gz two"}\n'))
    pq.write_table(pa.table({"text": [f"pq {i}" for i in range(50)]}), root / "d.parquet", row_group_size=7)
    datasets.Dataset.from_dict({"text": [f"hf {i}" for i in range(30)]}).save_to_disk(str(root / "e_hf"))
    (root / ".hidden.txt").write_text("never read")
    return root


def upload(local_root, bucket: str) -> str:
    fs = s3fs.S3FileSystem()
    for path in sorted(p for p in local_root.rglob("*") if p.is_file()):
        fs.put_file(str(path), f"{bucket}/corpus/{path.relative_to(local_root)}")
    return f"s3://{bucket}/corpus"


def test_s3_inputs_read_exactly_like_local_files(s3_env, corpus):
    remote = upload(corpus, s3_env.new_bucket())
    local_docs, local_files, _ = read_all([str(corpus)], unit_bytes=1500)
    docs, files, _ = read_all([remote], unit_bytes=1500)
    assert [f.uri.removeprefix(remote) for f in files] == [
        f.uri.removeprefix(str(corpus)) for f in local_files
    ]
    assert [(f.kind, f.compression, f.size) for f in files] == [
        (f.kind, f.compression, f.size) for f in local_files
    ]
    assert [d.text for d in docs] == [d.text for d in local_docs] and len(docs) == 782
    size, etag = files[0].identity.split(":")
    assert int(size) == files[0].size and len(etag) == 32  # size:ETag (an MD5 for single-part uploads)
    globbed, files, _ = read_all([f"{remote}/*.jsonl*"], unit_bytes=100)
    assert [f.uri.rsplit("/", 1)[1] for f in files] == ["a.jsonl", "c.jsonl.gz"]
    assert len(globbed) == 402


def test_missing_s3_key_is_bad_input_but_a_missing_bucket_is_a_setup_error(s3_env):
    bucket = s3_env.new_bucket()
    with pytest.raises(DataError, match=f"s3://{bucket}/nope.txt: input path does not exist"):
        read_all([f"s3://{bucket}/nope.txt"])
    _, files, policy = read_all([f"s3://{bucket}/nope.txt"], on_error="skip")
    assert files == [] and policy.counts == {"missing_path": 1}
    missing_bucket = f"bucket 'no-such-bucket' does not exist at endpoint {s3_env.endpoint}"
    with pytest.raises(DataError, match=missing_bucket):
        read_all(["s3://no-such-bucket/corpus"], on_error="skip")


def assert_one_line_error(info: pytest.ExceptionInfo, uri: str, endpoint: str) -> None:
    message = str(info.value)
    assert message.startswith(f"{uri}: cannot read it from endpoint {endpoint}")
    assert "AWS_ENDPOINT_URL" in message and "AWS_ACCESS_KEY_ID" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no botocore traceback


def test_wrong_credentials_fail_with_a_clear_error(s3_env, monkeypatch):
    bucket = s3_env.new_bucket()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with pytest.raises(DataError) as info:
            read_all([f"s3://{bucket}/corpus"], on_error="skip")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert_one_line_error(info, f"s3://{bucket}/corpus", s3_env.endpoint)


def test_unreachable_endpoint_fails_fast_even_when_skipping(monkeypatch):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for key, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    started = time.monotonic()
    try:
        with pytest.raises(DataError) as info:
            read_all(["s3://bucket/corpus/*.jsonl"], on_error="skip")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert time.monotonic() - started < 20
    assert_one_line_error(info, "s3://bucket/corpus/*.jsonl", endpoint)
    assert "Could not connect" in str(info.value)
