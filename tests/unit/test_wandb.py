"""W&B logging, offline: the run written under <run_dir>/wandb is read back record by record and must
hold the resolved config and exactly the numbers of metrics.jsonl; a resumed run continues the same
W&B run id, a fresh start in the same directory does not; online without credentials fails at once."""

from __future__ import annotations

import glob
import json
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from wandb.proto import wandb_internal_pb2

from dist_llm.config import load_config
from dist_llm.errors import ConfigError
from dist_llm.metrics.sinks import grouped_key
from dist_llm.metrics.wandb_sink import RUN_ID_FILE, WandbSink
from tests.conftest import make_trainer, read_metrics, run_train

WANDB = ["logging.wandb.enabled=true", "logging.wandb.tags=ci, tiny"]

# A .wandb file is wandb's datastore: a 7-byte file header, then a LevelDB-style log of 32 KiB blocks
# whose chunks (checksum, length, type) carry serialized `Record` protobufs. wandb 0.31 ships no Python
# reader, and `wandb sync` only uploads, so the test parses the format itself.
_BLOCK = 32768
_CHUNK = struct.Struct("<IHB")
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: str) -> Iterator[wandb_internal_pb2.Record]:
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", f"{path} is not a W&B datastore"
    pos, parts = 7, []
    while pos + _CHUNK.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK.size:  # a block tail too short for a chunk header is zero padding
            pos += left
            continue
        _, length, kind = _CHUNK.unpack_from(data, pos)
        if pos + _CHUNK.size + length > len(data):  # still being written
            return
        if kind not in (_FULL, _FIRST, _MIDDLE, _LAST):
            pos += left
            continue
        parts.append(data[pos + _CHUNK.size : pos + _CHUNK.size + length])
        pos += _CHUNK.size + length
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def _complete_records(path: str, timeout: float = 10.0) -> list[wandb_internal_pb2.Record]:
    """wandb-core writes the file asynchronously: `run.finish()` may return some milliseconds before
    the records are on disk, so wait for the exit record, which is written last."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(_records(path))
        if any(r.HasField("exit") for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.02)


def _values(items: Any) -> dict[str, Any]:
    """Key -> value of a record's items (newer wandb writes keys as `nested_key` parts)."""
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


@dataclass
class OfflineRun:
    run: wandb_internal_pb2.RunRecord = field(default_factory=wandb_internal_pb2.RunRecord)
    config: dict[str, Any] = field(default_factory=dict)
    history: dict[int, dict[str, Any]] = field(default_factory=dict)
    """One row per W&B step: every record logged at that step, merged."""
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None


def read_offline_runs(run_dir: str) -> list[OfflineRun]:
    """Every offline W&B run under <run_dir>/wandb, oldest first."""
    runs = []
    for path in glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb")):
        out = OfflineRun()
        for rec in _complete_records(path):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                out.run.CopyFrom(rec.run)
                out.config.update(_values(rec.run.config.update))
            elif kind == "config":
                out.config.update(_values(rec.config.update))
            elif kind == "history":
                out.history[rec.history.step.num] = _values(rec.history.item)
            elif kind == "summary":
                out.summary.update(_values(rec.summary.update))
            elif kind == "exit":
                out.exit_code = rec.exit.exit_code
        runs.append(out)
    return sorted(runs, key=lambda r: (r.run.start_time.seconds, r.run.start_time.nanos))


def _assert_logged_as_in_jsonl(run: OfflineRun, records: list[dict]) -> None:
    """Every number of every metrics.jsonl record is in the W&B row of its step, bit for bit."""
    for record in records:
        row = run.history[record["step"]]
        for k, v in record.items():
            if k != "step" and not isinstance(v, str):
                assert row[grouped_key(k)] == v, (record["step"], k)


def _train_steps(run: OfflineRun) -> list[int]:
    return sorted(step for step, row in run.history.items() if "train/loss" in row)


def test_offline_run_holds_the_config_metrics_evals_and_checkpoint_events(tmp_path, dataset):
    run_dir = str(tmp_path / "wb-run")
    run_train(
        run_dir,
        dataset,
        [
            *WANDB,
            "train.max_steps=4",
            "train.eval_interval=2",
            "checkpoint.interval=2",
            "checkpoint.async_save=false",
        ],
    )
    (run,) = read_offline_runs(run_dir)
    with open(os.path.join(run_dir, RUN_ID_FILE)) as f:
        assert run.run.run_id == f.read()
    assert (run.run.project, run.run.display_name, run.run.tags) == ("dist-llm", "wb-run", ["ci", "tiny"])
    with open(os.path.join(run_dir, "config.yaml")) as f:
        assert {k: v for k, v in run.config.items() if k != "_wandb"} == yaml.safe_load(f)
    assert run.exit_code == 0

    records = read_metrics(run_dir)
    _assert_logged_as_in_jsonl(run, records)
    assert _train_steps(run) == [1, 2, 3, 4]
    assert all(run.history[s]["memory/rss_bytes"] > 0 for s in _train_steps(run))
    assert [s for s, row in sorted(run.history.items()) if "eval/val_loss" in row] == [0, 2, 4]
    assert [
        row["checkpoint/committed"] for _, row in sorted(run.history.items()) if "checkpoint/committed" in row
    ] == [2, 4]
    assert run.summary["checkpoint/uri"].endswith("step-00000004")
    assert [r["checkpoint_committed"] for r in records if "checkpoint_committed" in r] == [2, 4]


def test_resumed_run_continues_the_same_wandb_run_and_a_fresh_start_does_not(tmp_path, dataset):
    run_dir = str(tmp_path / "resumed")
    common = [*WANDB, "train.max_steps=4", "checkpoint.interval=2"]
    make_trainer(run_dir, dataset, [*common, "train.exit_at_step=2"], []).fit()
    make_trainer(run_dir, dataset, [*common, "checkpoint.resume=auto"], []).fit()
    first, resumed = read_offline_runs(run_dir)
    assert resumed.run.run_id == first.run.run_id
    assert (_train_steps(first), _train_steps(resumed)) == ([1, 2], [3, 4])
    records = read_metrics(run_dir)
    _assert_logged_as_in_jsonl(first, [r for r in records if r["step"] <= 2])
    _assert_logged_as_in_jsonl(resumed, [r for r in records if r["step"] > 2])

    make_trainer(run_dir, dataset, [*common, "train.max_steps=1"], []).fit()
    fresh = read_offline_runs(run_dir)[-1]
    assert fresh.run.run_id != first.run.run_id and _train_steps(fresh) == [1]
    with open(os.path.join(run_dir, RUN_ID_FILE)) as f:
        assert f.read() == fresh.run.run_id


def test_online_without_an_api_key_fails_at_once_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: nothing to log in with, and no prompt
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = load_config(
        None,
        ["logging.wandb.enabled=true", "logging.wandb.mode=online", f"logging.run_dir={tmp_path / 'run'}"],
    )
    with pytest.raises(ConfigError, match="logging.wandb.mode=online.*wandb login"):
        WandbSink(cfg, resumed=False)
