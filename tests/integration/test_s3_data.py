"""Training data streamed from a real S3-compatible store (SeaweedFS): the same batches and losses as
the local copy, only the byte ranges a rank reads fetched (counted by the store itself) into a
verified cache that ranks share, clear errors."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import s3fs

from data_prep.checks import CHUNK_BYTES, checks_path
from data_prep.manifest import MANIFEST_NAME, SHARD_TABLE_NAME, read_manifest
from dist_llm.bench.dataloader import write_whole_shard_manifest
from dist_llm.checkpoint.discovery import find_resumable
from dist_llm.checkpoint.state import load_trainer_state
from dist_llm.data import cache as cache_mod
from dist_llm.data.cache import DataCache, cached_name
from dist_llm.data.collate import CausalLMCollator
from dist_llm.data.loader import TrainBatches
from dist_llm.data.mixture import Source
from dist_llm.data.packing import PackedSamples
from dist_llm.data.shards import TokenShards
from dist_llm.errors import DataError
from tests.conftest import free_port, run_train, train_losses
from tests.unit.shard_data import counting_docs, make_dataset


def upload_dataset(local: str, bucket: str, prefix: str = "ds") -> str:
    """Copy what training reads (manifest, shards and their checks, tokenizer) to s3://bucket/prefix."""
    manifest = read_manifest(local)
    shards = [table.path(i) for table in manifest.shards.values() for i in range(len(table))]
    files = [
        MANIFEST_NAME,
        manifest.header["shard_table"]["path"],
        manifest.tokenizer["path"],
        *shards,
        *map(checks_path, shards),
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
    ranges = [f for f in files if f.endswith(".chunks")]
    assert ranges and not [f for f in files if ".tmp-" in f or f.endswith(".arrow") and "/units/" in f]
    manifest = read_manifest(dataset)
    listed = {table.sha256(i)[:16] for table in manifest.shards.values() for i in range(len(table))}
    assert all(f.split(".")[-3] in listed for f in ranges)  # named by the checksum of their shard


def test_opening_an_s3_split_fetches_only_the_manifest_and_a_read_only_its_chunks(tmp_path, s3_env):
    local = make_dataset(
        str(tmp_path / "ds"), {"train": counting_docs(800), "validation": counting_docs(6)}, shard_tokens=2000
    )
    bucket = s3_env.new_bucket()
    remote = upload_dataset(local, bucket)
    cache_root = str(tmp_path / "cache")
    header = read_manifest(local).header
    shards = TokenShards(remote, "train", cache=DataCache(cache_root))
    opened = s3_env.sent_bytes(bucket)
    manifest_bytes = os.path.getsize(os.path.join(local, MANIFEST_NAME))
    assert opened == manifest_bytes + header["shard_table"]["bytes"]  # the shard table is the one download
    folder = DataCache(cache_root).dataset_dir(remote)
    table = os.path.relpath(
        cached_name(folder, SHARD_TABLE_NAME, header["shard_table"]["sha256"]), cache_root
    )
    uri_txt = os.path.relpath(os.path.join(folder, "uri.txt"), cache_root)
    assert cache_entries(cache_root) == sorted([table, f"{table}.lock", uri_txt, "usage"])

    last = len(shards.table) - 1
    window = shards.read(shards.num_tokens - 10, 10)
    assert np.array_equal(window, TokenShards(local, "train").read(shards.num_tokens - 10, 10))
    fetched = s3_env.sent_bytes(bucket) - opened
    # 10 uint32 ids: at most two chunks of the last shard's token ids, plus their two checks.
    assert fetched <= 2 * CHUNK_BYTES + 8 and fetched < shards.table.bytes[last] / 20
    (entry,) = [f for f in cache_entries(cache_root) if f.endswith(".chunks")]
    assert shards.table.sha256(last)[:16] in entry
    assert s3_env.sent_bytes(bucket) == opened + fetched  # read again: from the cache
    shards.read(shards.num_tokens - 10, 10)
    assert s3_env.sent_bytes(bucket) == opened + fetched


def test_bytes_fetched_per_trained_token_stay_near_the_token_bytes(tmp_path, s3_env):
    """The loader as training drives it (prefetching ahead) over 256-token windows of uint16 ids,
    against the same data in the format before range reads (whole shards downloaded)."""
    docs = [d % 65536 for d in counting_docs(40_000, first_len=20)]
    local = make_dataset(
        str(tmp_path / "ds"), {"train": docs, "validation": docs[:5]}, 100_000, vocab_size=65536
    )
    ranged_bucket, whole_bucket = s3_env.new_bucket(), s3_env.new_bucket()
    whole = upload_dataset(local, whole_bucket)
    write_whole_shard_manifest(whole, read_manifest(local))
    sent = {}
    for bucket, uri in ((ranged_bucket, upload_dataset(local, ranged_bucket)), (whole_bucket, whole)):
        cache = DataCache(str(tmp_path / f"cache-{bucket}"), workers=2)
        samples = PackedSamples(TokenShards(uri, "train", cache=cache), 256)
        batches = TrainBatches(
            [Source("", 1.0, samples)], CausalLMCollator(), 5, 8, 4, 0, 1, prefetch_steps=2
        )
        before = s3_env.sent_bytes(bucket)
        for _ in range(25):
            batches.next_step()
        cache._pool.shutdown(wait=True)  # the prefetches past the last step count too
        sent[bucket] = s3_env.sent_bytes(bucket) - before
    token_bytes = (25 + 3) * 8 * 256 * 2  # the steps taken and the three prefetched, uint16
    assert sent[ranged_bucket] <= 1.5 * token_bytes
    assert sent[whole_bucket] > 5 * sent[ranged_bucket]


def test_a_corrupt_range_is_refused_after_retries_naming_the_uri(tmp_path, s3_env, monkeypatch):
    local = make_dataset(
        str(tmp_path / "ds"), {"train": counting_docs(30), "validation": counting_docs(6)}, shard_tokens=60
    )
    bucket = s3_env.new_bucket()
    remote = upload_dataset(local, bucket)
    train = read_manifest(local).shards["train"]
    key = f"{bucket}/ds/{train.path(0)}"
    data = bytearray(s3fs.S3FileSystem().cat_file(key))
    data[int(train.values_offsets[0]) + 4] ^= 0xFF  # token 1
    s3fs.S3FileSystem().pipe(key, bytes(data))
    monkeypatch.setattr(cache_mod.time, "sleep", lambda s: None)
    with pytest.raises(DataError, match="download failed 3 times.*do not match their checks") as err:
        TokenShards(remote, "train", cache=DataCache(str(tmp_path / "cache"))).read(0, 4)
    assert f"{remote}/{train.path(0)}" in str(err.value)
    cached = cache_entries(str(tmp_path / "cache"))
    assert not [f for f in cached if ".tmp-" in f or f.endswith(".chunks")]  # nothing kept


def test_unreachable_endpoint_is_a_data_error_naming_the_uri(tmp_path, monkeypatch):
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
        TokenShards("s3://no-such-store/ds", "train", cache=DataCache(str(tmp_path)))
    assert time.monotonic() - start < 30
    s3fs.S3FileSystem.clear_instance_cache()


def test_bench_dataloader_counts_the_bytes_each_copy_fetched(dataset):
    """`dist-llm bench dataloader --s3`: its own SeaweedFS, the dataset read by range and, as the
    baseline, as whole shards, the bytes each training run fetched counted by the store."""
    from dist_llm.bench.dataloader import RANGED, WHOLE, bench_dataloader, format_table
    from tests.conftest import REPO, SMALL_MODEL

    overrides = [f"data.path={dataset}", "launch.nproc_per_node=1", *SMALL_MODEL, "train.precision=fp32"]
    environment = dict(os.environ)
    local, ranged, whole = bench_dataloader(
        str(REPO / "configs" / "tiny.yaml"), overrides, [], steps=3, warmup=1, s3=True
    )
    assert (local.reads, ranged.reads, whole.reads) == ("", RANGED, WHOLE)
    assert local.fetched_bytes is None and ranged.trained_tokens == 3 * 8 * 64
    assert 0 < ranged.fetched_bytes < whole.fetched_bytes
    assert ranged.fetched_per_token == pytest.approx(ranged.fetched_bytes / (ranged.trained_tokens * 2))
    assert dict(os.environ) == environment  # the store's credentials were this run's only
    table = format_table([local, ranged, whole]).splitlines()
    assert table[3].startswith(f"{ranged.location} (range reads) | 1 | ") and table[4].endswith("| 1.000x")
