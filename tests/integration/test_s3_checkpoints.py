"""Checkpoints on a real S3-compatible store: the commit protocol, discovery and exact resume work
on s3:// URIs exactly as on local paths, and the objects are really in the bucket."""

from __future__ import annotations

import pytest
import s3fs

from dist_llm.checkpoint import layout
from dist_llm.checkpoint.commit import commit, write_parts
from dist_llm.checkpoint.discovery import find_resumable
from dist_llm.checkpoint.state import load_model_state
from dist_llm.checkpoint.storage import list_dirs, read_bytes
from tests.conftest import assert_weights_equal, run_train, train_losses


def test_commit_protocol_on_s3(s3_env):
    root = f"s3://{s3_env.new_bucket()}/ckpt"
    for step in (1, 2):
        records = write_parts(layout.step_uri(root, step), {"model.pt": b"w" * 1000, "trainer.json": b"{}"})
        commit(root, step, records)
    write_parts(layout.step_uri(root, 3), {"model.pt": b"partial"})  # never committed
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
    names = {p.rsplit("/", 1)[-1] for p in fs.find(f"{bucket}/runs/resumed/step-00000003")}
    assert {"model.pt", "optimizer.pt", "trainer.json", "manifest.json", "COMMITTED",
            "rng-rank00000.pt", "rng-rank00001.pt"} <= names
    run_train(resumed, dataset, [*common, f"checkpoint.dir={remote}", "checkpoint.resume=auto"], nproc=2)

    two_rank = str(tmp_path / "two_rank")
    run_train(two_rank, dataset, common, nproc=2)
    assert train_losses(resumed) == train_losses(two_rank)
    assert_weights_equal(load_model_state(find_resumable(remote)),
                         load_model_state(find_resumable(f"{two_rank}/checkpoints")))
