"""`dist-llm bench data-scale` measures the loader's own code: its synthetic manifest loads like a
prepared one, and the next batch it reports (sample ids, byte ranges) is what the loader reads."""

from __future__ import annotations

import os
from dataclasses import asdict, replace

import numpy as np

from data_prep.manifest import read_manifest
from dist_llm.bench.data_scale import bench_data_scale, format_table, measure_rank, write_synthetic_dataset
from dist_llm.config import load_config
from dist_llm.data.sources import open_training_data, train_batches
from tests.unit.shard_data import counting_docs, make_dataset

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny.yaml")


def test_synthetic_manifest_has_the_requested_totals_and_varied_shards(tmp_path):
    header = write_synthetic_dataset(str(tmp_path), tokens=10**6, shards=100, seed=1)
    manifest = read_manifest(str(tmp_path))
    assert header["splits"]["train"]["tokens"] + header["splits"]["validation"]["tokens"] == 10**6
    assert len(manifest.shards["train"]) == 99 and len(manifest.shards["validation"]) == 1
    train = manifest.shards["train"]
    assert train.tokens.min() < 0.8 * train.tokens.mean() and train.tokens.max() > 1.2 * train.tokens.mean()
    assert (train.values_offsets + 2 * train.tokens < train.bytes).all()
    assert sorted(os.listdir(tmp_path)) == ["manifest-shards.arrow", "manifest.json"]  # no shards


def test_next_batch_ids_and_byte_ranges_are_what_the_loader_reads(tmp_path):
    """Counting tokens (token at stream position p is p), several shards, a rank in the middle."""
    data_dir = make_dataset(
        str(tmp_path),
        {"train": counting_docs(400), "validation": counting_docs(20)},
        shard_tokens=300,
        vocab_size=32_000,
    )
    seq_len, world, rank, step = 16, 4, 2, 7
    overrides = [
        f"data.path={data_dir}",
        f"data.seq_len={seq_len}",
        "train.global_batch_size=16",
        "train.micro_batch_size=2",
    ]
    got = measure_rank(CONFIG, overrides, rank, world, resume_step=step)

    cfg = load_config(CONFIG, overrides)
    data = open_training_data(cfg.data)
    loader = train_batches(cfg, data, rank, world)
    loader.load_state(asdict(loader.state()) | {"consumed_samples": step * 16})
    rows = np.concatenate([b["input_ids"].numpy() for b in loader.next_step()])
    data.close()

    assert [sample for _, sample in got.next_samples] == (rows[:, 0] // seq_len).tolist()
    table = read_manifest(data_dir).shards["train"]
    read = [
        np.fromfile(
            os.path.join(data_dir, table.path(shard)), np.uint16, count=(end - first) // 2, offset=first
        )
        for _, shard, first, end in got.next_ranges
    ]
    windows = np.concatenate(read).astype(np.int64).reshape(len(rows), seq_len + 1)
    assert np.array_equal(windows[:, :-1], rows)
    assert len({shard for _, shard, _, _ in got.next_ranges}) > 1
    assert got.global_pieces >= 16 and got.global_bytes >= 16 * (seq_len + 1) * 2


def test_bench_reports_each_size_and_rank_from_fresh_processes(tmp_path):
    (result,) = bench_data_scale(
        [10**6], [50], seq_len=64, world=4, global_batch=8, ranks=[3], work_dir=str(tmp_path)
    )
    assert (result.tokens, result.shards, result.rank, result.world) == (10**6, 50, 3, 4)
    assert result.peak_rss_mb > result.baseline_rss_mb > 0 and result.start_s > 0
    assert result.samples == (10**6 - 10**4 - 65) // 64 + 1 and result.global_pieces >= 8
    assert os.listdir(tmp_path) == []  # each size's manifest is removed after its ranks ran
    bigger = replace(result, tokens=10**7, start_s=2 * result.start_s)
    assert "start 1.00x -> 2.00x" in format_table([result, bigger])
