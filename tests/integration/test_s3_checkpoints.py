"""Checkpoints on a real S3-compatible store: the commit protocol, discovery and exact resume work
on s3:// URIs exactly as on local paths, and the objects are really in the bucket."""

from __future__ import annotations

import pytest
import s3fs

from dist_llm import uri as uri_module
from dist_llm.checkpoint import layout
from dist_llm.checkpoint.commit import commit, write_parts
from dist_llm.checkpoint.discovery import find_resumable
from dist_llm.checkpoint.offline import model_tensors
from dist_llm.checkpoint.storage import list_dirs, read_bytes, read_range, write_bytes
from tests.conftest import assert_weights_equal, run_train, train_losses


def test_commit_protocol_on_s3(s3_env):
    root = f"s3://{s3_env.new_bucket()}/ckpt"
    for step in (1, 2):
        records = write_parts(
            layout.step_uri(root, step), {layout.state_file(0): b"w" * 1000, "trainer.json": b"{}"}
        )
        commit(root, step, records)
    write_parts(layout.step_uri(root, 3), {layout.state_file(0): b"partial"})  # never committed
    assert list_dirs(root) == ["latest", "step-00000001", "step-00000002", "step-00000003"]
    assert read_bytes(f"{root}/latest") == b"step-00000002"
    assert find_resumable(root) == layout.step_uri(root, 2)


@pytest.mark.distributed
def test_train_resume_from_s3_is_bitwise(tmp_path, dataset, s3_env):
    bucket = s3_env.new_bucket()
    common = ["train.max_steps=6", "train.precision=fp32", "checkpoint.interval=0"]
    remote = f"s3://{bucket}/runs/resumed"
    resumed = str(tmp_path / "resumed")
    run_train(resumed, dataset, [*common, "train.exit_at_step=3", f"checkpoint.dir={remote}"], nproc=2)
    fs = s3fs.S3FileSystem()
    prefix = f"{bucket}/runs/resumed/step-00000003/"
    names = {p[len(prefix) :] for p in fs.find(prefix)}
    # Each rank uploaded its own shard file; no object holds the whole model.
    assert {
        layout.state_file(0),
        layout.state_file(1),
        layout.STATE_METADATA,
        "trainer.json",
        "manifest.json",
        "COMMITTED",
        "rng-rank00000.pt",
        "rng-rank00001.pt",
    } <= names
    run_train(resumed, dataset, [*common, f"checkpoint.dir={remote}", "checkpoint.resume=auto"], nproc=2)

    two_rank = str(tmp_path / "two_rank")
    run_train(two_rank, dataset, common, nproc=2)
    assert train_losses(resumed) == train_losses(two_rank)
    assert_weights_equal(
        dict(model_tensors(find_resumable(remote))),
        dict(model_tensors(find_resumable(f"{two_rank}/checkpoints"))),
    )


def test_large_shard_goes_up_as_a_multipart_upload_and_reads_back_by_range(s3_env, monkeypatch):
    """A shard bigger than one PUT streams its buffers as parts (no joined copy in memory); ranged
    reads return exactly the bytes of one item."""
    monkeypatch.setattr(uri_module, "SINGLE_PUT_BYTES", 2**20)
    monkeypatch.setattr(uri_module, "PART_BYTES", 5 * 2**20)  # S3's smallest part
    bucket = s3_env.new_bucket()
    buffers = [memoryview(bytes([i]) * (3 * 2**20 + i)) for i in range(4)]  # 12 MiB in 4 items: 2 parts
    write_bytes(f"s3://{bucket}/shard.distcp", buffers)
    info = s3fs.S3FileSystem().info(f"{bucket}/shard.distcp")
    assert info["size"] == sum(b.nbytes for b in buffers)
    etag = info["ETag"].strip('"')
    assert "-" in etag and int(etag.rsplit("-", 1)[1]) >= 2, f"not a multipart upload: {etag}"
    offset = buffers[0].nbytes + buffers[1].nbytes
    assert read_range(f"s3://{bucket}/shard.distcp", offset, buffers[2].nbytes) == bytes(buffers[2])
