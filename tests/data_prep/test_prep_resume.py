"""Resuming prep and splitting it over machines: real processes, real files, no mocks."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from data_prep.checks import checks_path
from data_prep.cli import add_arguments, run
from data_prep.manifest import Manifest, read_manifest
from data_prep.tokenizer import file_sha256
from dist_llm.errors import DataError

REPO = Path(__file__).resolve().parents[2]


def prep(out: Path, *argv: object, env: dict | None = None) -> Manifest | None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args([str(a) for a in argv] + ["--out", str(out), "--quiet"])) == 0
    return read_manifest(str(out)) if (out / "manifest.json").exists() else None


def rows(path: Path) -> list[list[int]]:
    return pa.ipc.open_file(str(path)).read_all().column("tokens").to_pylist()


def stream(out: Path, manifest: Manifest) -> dict[str, list]:
    return {
        split: [row for i in range(len(table)) for row in rows(out / table.path(i))]
        for split, table in manifest.shards.items()
    }


def mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in (out / "units").rglob("*")}


@pytest.fixture
def corpus(tmp_path, corpus_docs, jsonl_file) -> list[Path]:
    return [jsonl_file(f"part{i}.jsonl", corpus_docs[i * 100 : (i + 1) * 100]) for i in range(3)]


def test_rerun_reuses_finished_units_and_redoes_corrupt_ones(tmp_path, corpus, sp_model):
    out = tmp_path / "out"
    args = (*corpus, "--tokenizer", sp_model, "--unit-mb", 0.005, "--workers", 2)
    first = prep(out, *args)
    before = mtimes(out)
    assert first.header["units"] >= 6
    again = prep(out, *args)
    assert mtimes(out) == before  # every unit reused, nothing rewritten
    assert stream(out, again) == stream(out, first)

    # A corrupt shard (bit flip), a missing one and a shard's corrupt checks: only their units
    # are redone.
    train = first.shards["train"]
    bad = [train.path(i) for i in (0, len(train) - 1, len(train) // 2)]
    for rel in (bad[0], checks_path(bad[2])):
        data = bytearray((out / rel).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (out / rel).write_bytes(bytes(data))
    (out / bad[1]).unlink()
    fixed = prep(out, *args)
    changed = [rel for rel, t in mtimes(out).items() if before.get(rel) != t]
    redone = {rel.split("/")[1].removesuffix(".json") for rel in changed}
    assert redone == {path.split("/")[1] for path in bad} and len(redone) == 3  # exactly the damaged units
    assert stream(out, fixed) == stream(out, first)
    for table in fixed.shards.values():  # the manifest never points at a corrupt shard
        assert all(file_sha256(str(out / table.path(i))) == table.sha256(i) for i in range(len(table)))


def test_changed_arguments_or_inputs_are_refused_unless_forced(tmp_path, corpus, sp_model, corpus_docs):
    out = tmp_path / "out"
    prep(out, *corpus, "--tokenizer", sp_model)
    with pytest.raises(DataError, match=r"different settings \(.*shard_tokens: 1048576 -> 999.*--force"):
        prep(out, *corpus, "--tokenizer", sp_model, "--shard-tokens", 999)
    with pytest.raises(DataError, match="different settings.*tokenizer"):
        prep(out, *corpus, "--vocab-size", 400)
    corpus[0].write_text(corpus[0].read_text() + '{"text": "one more document"}\n')
    with pytest.raises(DataError, match="different settings.*inputs"):
        prep(out, *corpus, "--tokenizer", sp_model)
    assert not (out / "manifest.json").exists()  # a refused run still leaves no stale manifest
    manifest = prep(out, *corpus, "--tokenizer", sp_model, "--shard-tokens", 999, "--force")
    assert manifest.header["filters"]["docs_read"] == 301


def test_sigkill_mid_run_leaves_no_manifest_and_the_rerun_finishes(tmp_path, corpus, sp_model):
    out, clean = tmp_path / "out", tmp_path / "clean"
    args = [*map(str, corpus), "--tokenizer", sp_model, "--unit-mb", "0.002", "--workers", "1"]
    reference = prep(clean, *args)
    proc = subprocess.Popen(
        [sys.executable, "-m", "data_prep", *args, "--out", str(out), "--quiet"],
        cwd=REPO,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while len(list((out / "units").glob("u-*.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done = len(list((out / "units").glob("u-*.json")))
    assert 3 <= done < reference.header["units"]
    assert not (out / "manifest.json").exists()
    resumed = prep(out, *args)
    assert stream(out, resumed) == stream(clean, reference)


def test_parts_on_several_machines_merge_into_the_single_machine_stream(tmp_path, corpus, sp_model):
    single = tmp_path / "single"
    reference = prep(single, *corpus, "--tokenizer", sp_model, "--unit-mb", 0.003)
    out = tmp_path / "parts"
    common = (*corpus, "--tokenizer", sp_model, "--unit-mb", 0.003)
    assert prep(out, *common, "--num-parts", 3, "--part", 2) is None  # others still missing
    with pytest.raises(DataError, match=r"units are not finished \(units 0, 1, 3, 4"):
        prep(out, "merge")
    # Part 0 through a SLURM array's environment, in a real subprocess.
    env = {
        **os.environ,
        "SLURM_ARRAY_TASK_COUNT": "3",
        "SLURM_ARRAY_TASK_ID": "10",
        "SLURM_ARRAY_TASK_MIN": "10",
    }
    subprocess.run(
        [sys.executable, "-m", "data_prep", *map(str, common), "--out", str(out), "--quiet"],
        cwd=REPO,
        env=env,
        check=True,
        timeout=120,
    )
    assert not (out / "manifest.json").exists()
    merged = prep(out, *common, "--num-parts", 3, "--part", 1)  # the last part merges
    assert stream(out, merged) == stream(single, reference)
    again = prep(out, "merge")
    # The same shard table, byte for byte, whichever machine wrote which unit.
    assert again.header["splits"] == merged.header["splits"] == reference.header["splits"]
    assert again.header["shard_table"] == merged.header["shard_table"] == reference.header["shard_table"]


def test_parts_need_a_shared_tokenizer(tmp_path, corpus):
    with pytest.raises(DataError, match="--tokenizer-only"):
        prep(tmp_path / "o", *corpus, "--num-parts", 2, "--part", 0)
    assert prep(tmp_path / "tok", *corpus, "--vocab-size", 400, "--tokenizer-only") is None
    assert (tmp_path / "tok" / "tokenizer.model").exists()
    with pytest.raises(DataError, match="--num-parts and --part go together"):
        prep(tmp_path / "o", *corpus, "--num-parts", 2)
    with pytest.raises(DataError, match="0 <= part < num_parts"):
        prep(tmp_path / "o", *corpus, "--num-parts", 2, "--part", 2)
