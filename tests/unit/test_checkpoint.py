"""Checkpoints: the commit protocol, discovery of the newest good one, fallback past corrupt ones,
retention, atomic writes, and an exact save/load round trip of a real engine in one process."""

from __future__ import annotations

import copy
import json
import logging
import os

import pytest
import torch

from dist_llm.checkpoint import commit as commit_module
from dist_llm.checkpoint import layout
from dist_llm.checkpoint.commit import check_manifest, commit, write_parts
from dist_llm.checkpoint.discovery import committed_steps, find_resumable, resume_candidates
from dist_llm.checkpoint.offline import model_tensors
from dist_llm.checkpoint.restore import restore_newest
from dist_llm.checkpoint.retention import apply_retention
from dist_llm.checkpoint.state import load_checkpoint, load_trainer_state
from dist_llm.checkpoint.storage import join, list_dirs, read_bytes, write_bytes
from dist_llm.checkpoint.writer import CheckpointWriter
from dist_llm.config import CheckpointConfig, load_config
from dist_llm.distributed import World
from dist_llm.engine.torch_engine import TorchEngine
from dist_llm.errors import CheckpointError, CorruptCheckpointError

SHARD = layout.state_file(0)


def parts_for(step: int) -> dict[str, bytes]:
    return {
        SHARD: f"model and optimizer shard of step {step}".encode() * 50,
        layout.STATE_METADATA: f"metadata of step {step}".encode() * 30,
        layout.TRAINER: json.dumps({"step": step}).encode(),
        layout.rng_name(0): b"rng0-%d" % step,
        layout.rng_name(1): b"rng1-%d" % step,
    }


def save_committed(root: str, step: int) -> str:
    """What `save_checkpoint` does on disk, without an engine: parts, then the commit."""
    records = write_parts(layout.step_uri(root, step), parts_for(step))
    commit(root, step, records)
    return layout.step_uri(root, step)


def latest_of(root: str) -> str:
    return read_bytes(join(root, layout.LATEST)).decode()


@pytest.fixture
def root(tmp_path) -> str:
    return str(tmp_path / "checkpoints")


# --- commit protocol ---------------------------------------------------------------------------


def test_parts_without_marker_are_never_used(root):
    save_committed(root, 10)
    step_uri = layout.step_uri(root, 20)
    records = write_parts(step_uri, parts_for(20))
    assert committed_steps(root) == [10]
    assert find_resumable(root) == layout.step_uri(root, 10)
    # Even with a complete manifest, no marker means not committed.
    write_bytes(join(step_uri, layout.MANIFEST), json.dumps({"step": 20, "files": records}).encode())
    assert committed_steps(root) == [10]
    assert find_resumable(root) == layout.step_uri(root, 10)
    with pytest.raises(CheckpointError, match=layout.COMMITTED):
        check_manifest(step_uri)


def test_commit_writes_manifest_then_marker_then_latest(root, monkeypatch):
    written: list[str] = []
    real_write = commit_module.write_bytes

    def recording_write(uri: str, data: bytes) -> None:
        written.append(uri)
        real_write(uri, data)

    monkeypatch.setattr(commit_module, "write_bytes", recording_write)
    save_committed(root, 7)
    step_uri = layout.step_uri(root, 7)
    assert written[-3:] == [
        join(step_uri, layout.MANIFEST),
        join(step_uri, layout.COMMITTED),
        join(root, layout.LATEST),
    ]
    assert set(written[:-3]) == {join(step_uri, name) for name in parts_for(7)}
    assert latest_of(root) == layout.step_dir_name(7)
    manifest = check_manifest(step_uri)
    assert manifest["step"] == 7 and set(manifest["files"]) == set(parts_for(7))


@pytest.mark.parametrize("crash_at", [0, 1, 2])
def test_crash_during_commit_leaves_previous_checkpoint_newest(root, monkeypatch, crash_at):
    """Crash before the manifest, before the marker, or before `latest`: resume stays correct."""
    save_committed(root, 10)
    records = write_parts(layout.step_uri(root, 20), parts_for(20))
    real_write = commit_module.write_bytes
    calls = []

    def crashing_write(uri: str, data: bytes) -> None:
        if len(calls) == crash_at:
            raise CheckpointError(f"simulated crash writing {uri}")
        calls.append(uri)
        real_write(uri, data)

    monkeypatch.setattr(commit_module, "write_bytes", crashing_write)
    with pytest.raises(CheckpointError, match="simulated crash"):
        commit(root, 20, records)
    expected = 20 if crash_at == 2 else 10  # marker written: step 20 is complete, only `latest` lags
    assert find_resumable(root) == layout.step_uri(root, expected)
    assert latest_of(root) == layout.step_dir_name(10)


# --- discovery ---------------------------------------------------------------------------------


def _flip_byte(path: str, pos: int) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_discovery_reads_only_the_manifest_and_a_listing(root, monkeypatch):
    """Choosing a checkpoint must not read (or hash) its data: that scales with the model."""
    save_committed(root, 10)
    newest = save_committed(root, 20)
    read = []
    real = commit_module.read_bytes

    def recording(uri: str) -> bytes:
        read.append(uri)
        return real(uri)

    monkeypatch.setattr(commit_module, "read_bytes", recording)
    assert find_resumable(root) == newest
    assert read == [join(newest, layout.MANIFEST)]


@pytest.mark.parametrize("name", [SHARD, layout.TRAINER, layout.rng_name(0), layout.MANIFEST])
def test_missing_file_in_newest_falls_back(root, warnings_log, name):
    save_committed(root, 10)
    newest = save_committed(root, 20)
    os.remove(join(newest, name))
    assert find_resumable(root) == layout.step_uri(root, 10)
    assert any(newest in r.getMessage() for r in warnings_log.records)


@pytest.mark.parametrize("name", [SHARD, layout.STATE_METADATA, layout.rng_name(1)])
def test_truncated_or_grown_file_in_newest_falls_back(root, warnings_log, name):
    save_committed(root, 10)
    newest = save_committed(root, 20)
    path = join(newest, name)
    data = read_bytes(path)
    for changed in (data[:-1], data + b"x"):
        write_bytes(path, changed)
        assert find_resumable(root) == layout.step_uri(root, 10), len(changed)
        assert any("manifest says" in r.getMessage() for r in warnings_log.records)


def test_manifest_of_wrong_shape_falls_back(root, warnings_log):
    save_committed(root, 10)
    newest = save_committed(root, 20)
    for text in ("[]", '{"step": 20}', '{"step": 20, "files": []}', "{"):
        write_bytes(join(newest, layout.MANIFEST), text.encode())
        assert find_resumable(root) == layout.step_uri(root, 10), text


def test_all_corrupt_or_none_gives_none(root, tmp_path):
    assert find_resumable(root) is None  # root does not exist yet
    assert find_resumable(str(tmp_path)) is None  # exists, holds no steps
    only = save_committed(root, 5)
    os.remove(join(only, layout.TRAINER))
    assert find_resumable(root) is None


def test_latest_pointing_at_uncommitted_step_is_ignored(root, warnings_log):
    save_committed(root, 10)
    write_parts(layout.step_uri(root, 30), parts_for(30))
    write_bytes(join(root, layout.LATEST), layout.step_dir_name(30).encode())
    assert find_resumable(root) == layout.step_uri(root, 10)
    assert any("not committed" in r.getMessage() for r in warnings_log.records)


def test_resume_candidates(root):
    save_committed(root, 10)
    newest = save_committed(root, 20)
    older = layout.step_uri(root, 10)
    assert list(resume_candidates("none", root)) == []
    assert list(resume_candidates("auto", root)) == [newest, older]
    assert list(resume_candidates("auto", root + "-empty")) == []
    assert list(resume_candidates(older, root)) == [older]  # an explicit path wins over newer ones
    partial = layout.step_uri(root, 30)
    write_parts(partial, parts_for(30))
    with pytest.raises(CheckpointError, match=layout.COMMITTED):
        list(resume_candidates(partial, root))
    with pytest.raises(CheckpointError):
        list(resume_candidates(join(root, "step-99999999"), root))


# --- retention ---------------------------------------------------------------------------------


def test_retention_keeps_newest_and_in_flight_and_drops_stale_partials(root):
    for step in (10, 20, 30, 40, 50):
        save_committed(root, step)
    write_parts(layout.step_uri(root, 15), parts_for(15))  # stale crash leftover
    write_parts(layout.step_uri(root, 25), parts_for(25))  # in flight (async save of an old step)
    write_parts(layout.step_uri(root, 60), parts_for(60))  # being written right now
    os.makedirs(join(root, "notes"))
    removed = apply_retention(root, keep_last=2, in_flight=25)
    assert removed == [10, 15, 20, 30]
    assert list_dirs(root) == ["latest", "notes", *(layout.step_dir_name(s) for s in (25, 40, 50, 60))]
    assert find_resumable(root) == layout.step_uri(root, 50)
    assert apply_retention(root, keep_last=2) == [25]  # no longer in flight, older than newest


def test_retention_never_removes_the_newest_committed(root):
    for step in (1, 2, 3):
        save_committed(root, step)
    assert apply_retention(root, keep_last=0, in_flight=None) == [1, 2]
    assert committed_steps(root) == [3]
    assert apply_retention(root, keep_last=1) == []
    assert committed_steps(root) == [3]


def test_retention_of_committed_in_flight_step(root):
    for step in (1, 2, 3, 4):
        save_committed(root, step)
    assert apply_retention(root, keep_last=1, in_flight=2) == [1, 3]
    assert committed_steps(root) == [4, 2]


def test_retention_keeps_every_kth_step_plus_the_last_n(root):
    for step in range(100, 1100, 100):
        save_committed(root, step)
    removed = apply_retention(root, keep_last=2, keep_every=500)
    assert removed == [100, 200, 300, 400, 600, 700, 800]
    assert committed_steps(root) == [1000, 900, 500]


def test_retention_without_any_commit_removes_nothing(root):
    write_parts(layout.step_uri(root, 5), parts_for(5))
    assert apply_retention(root, keep_last=1) == []
    assert list_dirs(root) == [layout.step_dir_name(5)]


# --- storage -----------------------------------------------------------------------------------


def test_write_bytes_roundtrip_and_file_uri(tmp_path):
    uri = join(str(tmp_path), "a", "b", "blob")
    write_bytes(uri, b"one")
    write_bytes("file://" + uri, b"two")
    assert read_bytes(uri) == b"two"
    assert os.listdir(tmp_path / "a" / "b") == ["blob"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "ckpt" / "model.pt"
    write_bytes(str(target), b"old complete content")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # the disk, not the code under test, fails
    with pytest.raises(CheckpointError, match="cannot write .*model.pt.*No space left.*free space"):
        write_bytes(str(target), b"new content that never lands")
    monkeypatch.undo()
    assert target.read_bytes() == b"old complete content"
    assert os.listdir(target.parent) == ["model.pt"]


def test_write_onto_directory_or_under_file_raises_clear_error(tmp_path):
    (tmp_path / "is_a_dir").mkdir()
    with pytest.raises(CheckpointError, match="is_a_dir"):
        write_bytes(str(tmp_path / "is_a_dir"), b"x")
    assert os.listdir(tmp_path / "is_a_dir") == []
    assert sorted(os.listdir(tmp_path)) == ["is_a_dir"]  # no temp file left beside it
    (tmp_path / "plain").write_bytes(b"file")
    with pytest.raises(CheckpointError, match="cannot write"):
        write_bytes(str(tmp_path / "plain" / "child"), b"x")


# --- save/load with a real engine ---------------------------------------------------------------


def save_checkpoint(root, step, engine, trainer_state, world, keep_last):
    writer = CheckpointWriter(root, CheckpointConfig(keep_last=keep_last, async_save=False), world)
    writer.save(step, engine, trainer_state)
    assert writer.committed_steps == [step]
    return layout.step_uri(root, step)


TINY = [
    "model.vocab_size=64",
    "model.d_model=32",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.max_seq_len=16",
    "model.dropout=0.2",
    "data.seq_len=16",
    "optim.lr=0.01",
]
WORLD = World(rank=0, local_rank=0, size=1, device=torch.device("cpu"))


def _engine(seed: int) -> TorchEngine:
    return TorchEngine(load_config(None, [*TINY, f"train.seed={seed}"]), WORLD)


def _train_step(engine: TorchEngine, data_seed: int) -> None:
    gen = torch.Generator().manual_seed(data_seed)
    tokens = torch.randint(0, 64, (2, 17), generator=gen)
    engine.train_step([{"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}], lr=0.01)


def _assert_same_tensors(a: object, b: object, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_save_load_roundtrip_is_bitwise_and_training_continues_identically(root):
    engine = _engine(seed=0)
    for i in range(2):  # non-empty optimizer moments
        _train_step(engine, data_seed=i)
    trainer_state = {"step": 2, "data": {"seed": 1, "consumed_samples": 4}}
    saved_state = copy.deepcopy(engine.state_dict())
    saved_rng = torch.get_rng_state()
    uri = save_checkpoint(root, 2, engine, trainer_state, WORLD, keep_last=2)

    assert uri == layout.step_uri(root, 2) and find_resumable(root) == uri
    assert set(check_manifest(uri)["files"]) == {
        SHARD,
        layout.STATE_METADATA,
        layout.TRAINER,
        layout.rng_name(0),
    }
    _assert_same_tensors(dict(model_tensors(uri)), saved_state["model"], "model")
    assert "output.weight" not in saved_state["model"], "a tied head is saved once, as the embedding"
    assert load_trainer_state(uri) == trainer_state

    _train_step(engine, data_seed=2)  # the original keeps going (dropout draws from the RNG)
    expected = copy.deepcopy(engine.state_dict())

    restored = _engine(seed=1)  # different init, and a different RNG position
    first = next(iter(saved_state["model"]))
    assert not torch.equal(restored.model.state_dict()[first], saved_state["model"][first])
    assert load_checkpoint(uri, restored, WORLD) == trainer_state
    assert torch.equal(torch.get_rng_state(), saved_rng)
    _assert_same_tensors(restored.state_dict(), saved_state, "state")

    _train_step(restored, data_seed=2)
    _assert_same_tensors(restored.state_dict(), expected, "after one more step")


def test_rng_restore_matters_for_the_next_step(root):
    """Guards the test above: with dropout, a step from another RNG position gives other weights."""
    engine = _engine(seed=0)
    _train_step(engine, data_seed=0)
    uri = save_checkpoint(root, 1, engine, {"step": 1}, WORLD, keep_last=1)
    _train_step(engine, data_seed=1)
    restored = _engine(seed=1)
    load_checkpoint(uri, restored, WORLD)
    torch.manual_seed(12345)  # lose the restored RNG position
    _train_step(restored, data_seed=1)
    assert not torch.equal(next(restored.model.parameters()), next(engine.model.parameters()))


def test_rank_missing_from_saved_run_takes_rank0_rng(root):
    engine = _engine(seed=0)
    saved_rng = torch.get_rng_state()
    uri = save_checkpoint(root, 1, engine, {"step": 1}, WORLD, keep_last=1)
    torch.manual_seed(777)
    load_checkpoint(uri, _engine(seed=3), World(rank=3, local_rank=3, size=4, device=torch.device("cpu")))
    assert torch.equal(torch.get_rng_state(), saved_rng)


def test_save_checkpoint_applies_retention(root):
    engine = _engine(seed=0)
    for step in (1, 2, 3, 4):
        save_checkpoint(root, step, engine, {"step": step}, WORLD, keep_last=2)
    assert committed_steps(root) == [4, 3]
    assert latest_of(root) == layout.step_dir_name(4)


def _flip_byte(path: str, pos: int) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("name", [SHARD, layout.STATE_METADATA, layout.TRAINER, layout.rng_name(0)])
def test_corrupt_bytes_in_newest_fall_back_to_previous_on_load(root, warnings_log, name):
    """Same size, other bytes: found by the rank that reads them (per tensor chunk for the shards),
    and the restore moves on to the previous checkpoint with the reason logged."""
    engine = _engine(seed=0)
    _train_step(engine, data_seed=0)
    older = save_checkpoint(root, 1, engine, {"step": 1}, WORLD, keep_last=5)
    expected = copy.deepcopy(engine.state_dict())
    _train_step(engine, data_seed=1)
    newest = save_checkpoint(root, 2, engine, {"step": 2}, WORLD, keep_last=5)
    path = join(newest, name)
    size = os.path.getsize(path)
    for pos in sorted({0, size // 2, size - 1}):
        _flip_byte(path, pos)
        warnings_log.clear()
        restored = _engine(seed=1)
        assert restore_newest("auto", root, restored, WORLD) == (older, {"step": 1}), (name, pos)
        _assert_same_tensors(restored.state_dict(), expected, "state")
        assert any(
            "skipping checkpoint" in r.getMessage() and newest in r.getMessage()
            for r in warnings_log.records
            if r.levelno == logging.WARNING
        ), (name, pos)
        _flip_byte(path, pos)  # restore
        assert restore_newest("auto", root, _engine(seed=1), WORLD)[0] == newest


def test_explicit_corrupt_checkpoint_is_an_error_not_a_fallback(root):
    engine = _engine(seed=0)
    save_checkpoint(root, 1, engine, {"step": 1}, WORLD, keep_last=5)
    newest = save_checkpoint(root, 2, engine, {"step": 2}, WORLD, keep_last=5)
    _flip_byte(join(newest, SHARD), 5)
    with pytest.raises(CorruptCheckpointError, match="sha256"):
        restore_newest(newest, root, _engine(seed=1), WORLD)


def test_checkpoint_of_another_model_is_an_error_not_a_fallback(root):
    save_checkpoint(root, 1, _engine(seed=0), {"step": 1}, WORLD, keep_last=5)
    other = TorchEngine(load_config(None, [*TINY, "model.d_model=48"]), WORLD)
    with pytest.raises(CheckpointError, match="cannot load into this model"):
        restore_newest("auto", root, other, WORLD)


def test_safetensors_export_is_sharded_past_the_shard_size(root, tmp_path):
    from safetensors.torch import load_file

    from dist_llm.export import export_safetensors

    engine = _engine(seed=0)
    _train_step(engine, data_seed=0)
    uri = save_checkpoint(root, 1, engine, {"step": 1, "config": load_config(None, TINY).to_dict()}, WORLD, 1)
    weights = dict(model_tensors(uri))
    index = export_safetensors(uri, str(tmp_path / "out"), dtype="bf16", max_shard_bytes=10_000)
    with open(index, encoding="utf-8") as f:
        weight_map = json.load(f)["weight_map"]
    assert set(weight_map) == set(weights) and len(set(weight_map.values())) > 2
    exported = {}
    for file in set(weight_map.values()):
        exported.update(load_file(str(tmp_path / "out" / file)))
    for name, value in weights.items():
        assert torch.equal(exported[name], value.to(torch.bfloat16)), name
