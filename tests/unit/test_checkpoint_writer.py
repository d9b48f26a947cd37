"""The background checkpoint writer: training is blocked only for the snapshot, at most one save is
in flight, and a failed upload is reported without touching the last committed checkpoint."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from dist_llm.checkpoint import layout, writer
from dist_llm.checkpoint.discovery import committed_steps, find_resumable
from dist_llm.checkpoint.writer import CheckpointWriter
from dist_llm.config import CheckpointConfig, load_config
from dist_llm.distributed import World
from dist_llm.engine.torch_engine import TorchEngine

WORLD = World(rank=0, local_rank=0, size=1, device=torch.device("cpu"))


@pytest.fixture
def engine() -> TorchEngine:
    cfg = load_config(
        None,
        [
            "model.vocab_size=64",
            "model.d_model=32",
            "model.n_layers=2",
            "model.n_heads=2",
            "model.max_seq_len=16",
        ],
    )
    return TorchEngine(cfg, WORLD)


@pytest.fixture
def slow_storage(monkeypatch) -> threading.Event:
    """Uploads that take until the test releases them: a store slower than the training step."""
    release = threading.Event()
    real = writer.write_parts

    def slow(step_uri, parts):
        release.wait(timeout=30)
        return real(step_uri, parts)

    monkeypatch.setattr(writer, "write_parts", slow)
    return release


def test_async_save_returns_before_the_upload_and_commits_later(tmp_path, engine, slow_storage):
    root = str(tmp_path / "ckpt")
    w = CheckpointWriter(root, CheckpointConfig(async_save=True), WORLD)
    blocked = w.save(1, engine, {"step": 1})
    assert blocked is not None and blocked < 5
    assert w.busy and committed_steps(root) == []  # training goes on while it uploads
    slow_storage.set()
    w.wait()
    assert committed_steps(root) == [1] and find_resumable(root) == layout.step_uri(root, 1)


def test_skip_when_previous_still_in_flight(tmp_path, engine, slow_storage, warnings_log):
    root = str(tmp_path / "ckpt")
    w = CheckpointWriter(root, CheckpointConfig(async_save=True, on_busy="skip"), WORLD)
    w.save(1, engine, {"step": 1})
    assert w.save(2, engine, {"step": 2}) is None
    assert "checkpoint for step 2 skipped" in warnings_log.text
    slow_storage.set()
    w.wait()
    assert committed_steps(root) == [1] and not os.path.exists(layout.step_uri(root, 2))


def test_wait_policy_finishes_previous_then_saves(tmp_path, engine, slow_storage):
    root = str(tmp_path / "ckpt")
    w = CheckpointWriter(root, CheckpointConfig(async_save=True, on_busy="wait"), WORLD)
    w.save(1, engine, {"step": 1})
    threading.Timer(0.3, slow_storage.set).start()
    start = time.perf_counter()
    assert w.save(2, engine, {"step": 2}) is not None
    assert time.perf_counter() - start >= 0.25  # it waited for step 1 to land
    w.wait()
    assert committed_steps(root) == [2, 1]


def test_failed_upload_is_reported_and_last_good_stays(tmp_path, engine, monkeypatch, warnings_log):
    root = str(tmp_path / "ckpt")
    w = CheckpointWriter(root, CheckpointConfig(async_save=True), WORLD)
    w.save(1, engine, {"step": 1})
    w.wait()

    def broken(step_uri, parts):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer, "write_parts", broken)
    w.save(2, engine, {"step": 2})
    w.wait()
    assert w.failed_steps == [2] and w.committed_steps == [1]
    assert "checkpoint step 2 failed" in warnings_log.text and "No space left" in warnings_log.text
    assert find_resumable(root) == layout.step_uri(root, 1)
