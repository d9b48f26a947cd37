"""Training data streamed from a real S3-compatible store (SeaweedFS): the same batches and losses as
the local copy, shards downloaded lazily into a verified cache that ranks share, clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
import pytest
import s3fs

from data_prep.manifest import MANIFEST_NAME, SHARD_TABLE_NAME, read_manifest
from dist_llm.checkpoint.discovery import find_resumable
from dist_llm.checkpoint.state import load_trainer_state
from dist_llm.data import cache as cache_mod
from dist_llm.data.cache import cached_name, dataset_cache_dir
from dist_llm.data.shards import TokenShards
from dist_llm.errors import DataError
from tests.conftest import free_port, run_train, train_losses
from tests.unit.shard_data import counting_docs, make_dataset


def upload_dataset(local: str, bucket: str, prefix: str = "ds") -> str:
    """Copy what training reads (manifest, shards, tokenizer) to s3://bucket/prefix."""
    manifest = read_manifest(local)
    files = [
        MANIFEST_NAME,
        manifest.header["shard_table"]["path"],
        manifest.tokenizer["path"],
        *(table.path(i) for table in manifest.shards.values() for i in range(len(table))),
    ]
    fs = s3fs.S3FileSystem()
    for rel in files:
        if os.path.exists(os.path.join(local, rel)):
            fs.put_file(os.path.join(local, rel), f"{bucket}/{prefix}/{rel}")
    return f"s3://{bucket}/{prefix}"


def cache_entries(cache_root: str) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(root, f), cache_root)
        for root, _, files in os.walk(cache_root)
        for f in files
    )


@pytest.mark.distributed
def test_two_ranks_training_from_s3_equals_local_bitwise(tmp_path, dataset, s3_env):
    remote = upload_dataset(dataset, s3_env.new_bucket())
    cache_root = str(tmp_path / "cache")
    common = ["train.max_steps=4", "train.precision=fp32", "train.eval_interval=2", "checkpoint.interval=0"]
    local_run, s3_run = str(tmp_path / "local"), str(tmp_path / "s3")
    run_train(local_run, dataset, common, nproc=2)
    # Both ranks share one cache directory and start by asking for the same shards at once.
    run_train(s3_run, remote, [*common, f"data.cache_dir={cache_root}", "data.prefetch_steps=2"], nproc=2)

    def records(run_dir: str) -> list[dict]:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            return [
                {k: v for k, v in json.loads(line).items() if "loss" in k} for line in f if "loss" in line
            ]

    assert train_losses(s3_run) == train_losses(local_run) and len(train_losses(s3_run)) == 4
    assert records(s3_run) == records(local_run)  # train and validation losses
    states = [load_trainer_state(find_resumable(f"{run}/checkpoints"))["data"] for run in (local_run, s3_run)]
    assert states[0] == states[1]
    files = cache_entries(cache_root)
    shards = [f for f in files if f.endswith(".arrow")]
    assert shards and not [f for f in files if ".tmp-" in f]
    for f in shards:  # every cached shard is a verified copy named by its checksum
        with open(os.path.join(cache_root, f), "rb") as fh:
            assert hashlib.sha256(fh.read()).hexdigest()[:16] in f


def test_opening_an_s3_split_downloads_only_the_shards_read(tmp_path, s3_env):
    local = make_dataset(
        str(tmp_path / "ds"), {"train": counting_docs(80), "validation": counting_docs(6)}, shard_tokens=60
    )
    remote = upload_dataset(local, s3_env.new_bucket())
    cache_root = str(tmp_path / "cache")
    shards = TokenShards(remote, "train", cache_dir=cache_root)
    folder = dataset_cache_dir(cache_root, remote)
    table = cached_name(folder, SHARD_TABLE_NAME, read_manifest(local).header["shard_table"]["sha256"])
    table = os.path.relpath(table, cache_root)  # the one file opening downloads
    uri_txt = os.path.relpath(os.path.join(folder, "uri.txt"), cache_root)
    assert len(shards.table) >= 8 and cache_entries(cache_root) == [table, f"{table}.lock", uri_txt]
    last = shards.table.sha256(len(shards.table) - 1)
    window = shards.read(shards.num_tokens - 10, 10)
    assert np.array_equal(window, TokenShards(local, "train").read(shards.num_tokens - 10, 10))
    arrows = [f for f in cache_entries(cache_root) if f.endswith(".arrow") and f != table]
    assert len(arrows) == 1 and arrows[0].endswith(f"{last[:16]}.arrow")


def test_a_corrupt_object_is_refused_after_retries(tmp_path, s3_env, monkeypatch):
    local = make_dataset(
        str(tmp_path / "ds"), {"train": counting_docs(30), "validation": counting_docs(6)}, shard_tokens=60
    )
    bucket = s3_env.new_bucket()
    remote = upload_dataset(local, bucket)
    first = read_manifest(local).shards["train"].path(0)
    s3fs.S3FileSystem().pipe(f"{bucket}/ds/{first}", b"not the shard the manifest lists")
    monkeypatch.setattr(cache_mod.time, "sleep", lambda s: None)
    with pytest.raises(DataError, match="download failed 3 times") as err:
        TokenShards(remote, "train", cache_dir=str(tmp_path / "cache")).read(0, 4)
    assert f"{remote}/{first}" in str(err.value)
    cached = cache_entries(str(tmp_path / "cache"))
    assert not [f for f in cached if ".tmp-" in f or "/units/" in f and f.endswith(".arrow")]  # no shard


def test_unreachable_endpoint_is_a_data_error_naming_the_uri(monkeypatch):
    for key, value in {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "AWS_MAX_ATTEMPTS": "1",
    }.items():  # botocore's own retries only slow the test
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    start = time.monotonic()
    with pytest.raises(
        DataError,
        match=r"s3://no-such-store/ds/manifest\.json: cannot read "
        r"\(EndpointConnectionError.*AWS_ENDPOINT_URL",
    ):
        TokenShards("s3://no-such-store/ds", "train")
    assert time.monotonic() - start < 30
    s3fs.S3FileSystem.clear_instance_cache()
