"""`dist-llm bench checkpoint` end to end against the real S3 server, small and quick: it must
commit real checkpoints both ways, time them, compare with a plain put, and clean up after itself."""

from __future__ import annotations

import json

import s3fs

from dist_llm.bench.s3_server import ACCESS_KEY, SECRET_KEY
from dist_llm.cli import main


def test_bench_checkpoint_on_s3(tmp_path, s3_env, capsys):
    bucket = s3_env.new_bucket()
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "checkpoint",
                "--uri",
                f"s3://{bucket}/bench",
                "--size-mb",
                "2",
                "--repeats",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "async/sync (goal <= 10%)" in table and f"s3://{bucket}/bench |" in table, table
    [result] = json.loads(out.read_text())
    assert 1.5 < result["checkpoint_mb"] < 4
    # The asynchronous writer blocks only for the snapshot; the synchronous save also uploads.
    assert 0 < result["async_blocked_s"] < result["sync_blocked_s"]
    assert result["blocked_ratio"] == result["async_blocked_s"] / result["sync_blocked_s"]
    assert result["writer_mb_per_s"] > 0 and result["plain_mb_per_s"] > 0
    fs = s3fs.S3FileSystem(
        key=ACCESS_KEY,
        secret=SECRET_KEY,
        skip_instance_cache=True,
        client_kwargs={"endpoint_url": s3_env.endpoint},
    )
    # Nothing left behind in the user's bucket (SeaweedFS may keep the empty "bench" folder entry).
    assert [p for p in fs.find(f"{bucket}/bench") if "bench-checkpoint-" in p] == []
