"""DeepSpeed ZeRO checkpoints on a real S3-compatible store: every rank uploads its own shard files,
and a stop + `--resume auto` from s3:// continues bitwise."""

from __future__ import annotations

import pytest
import s3fs

from tests.conftest import run_train, train_losses


@pytest.mark.distributed
def test_zero2_checkpoint_shards_on_s3_resume_bitwise(tmp_path, dataset, s3_env):
    bucket = s3_env.new_bucket()
    common = [
        "train.max_steps=6",
        "train.precision=fp32",
        "checkpoint.interval=0",
        "engine.type=deepspeed",
        "engine.zero_stage=2",
    ]
    remote = f"s3://{bucket}/zero2"
    resumed = str(tmp_path / "resumed")
    run_train(resumed, dataset, [*common, "train.exit_at_step=3", f"checkpoint.dir={remote}"], nproc=2)
    step_dir = f"{bucket}/zero2/step-00000003"
    files = [p.split("step-00000003/", 1)[1] for p in s3fs.S3FileSystem().find(step_dir)]
    optim_shards = sorted(f for f in files if f.startswith("deepspeed/") and f.endswith("optim_states.pt"))
    assert [("zero_pp_rank_0_" in f, "zero_pp_rank_1_" in f) for f in optim_shards] == [
        (True, False),
        (False, True),
    ], f"each rank uploads its own ZeRO-2 optimizer shard: {files}"
    run_train(resumed, dataset, [*common, f"checkpoint.dir={remote}", "checkpoint.resume=auto"], nproc=2)
    straight = str(tmp_path / "straight")
    run_train(straight, dataset, common, nproc=2)
    assert train_losses(resumed) == train_losses(straight)
