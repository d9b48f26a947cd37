"""Every logged training step carries rank 0's memory, which `dist-llm report` plots over time."""

from __future__ import annotations

import psutil

from dist_llm.callbacks.metrics import rss_bytes
from tests.conftest import make_trainer, read_metrics


def test_rss_reads_the_same_resident_size_the_os_reports():
    assert abs(rss_bytes() - psutil.Process().memory_info().rss) < 64 * 2**20


def test_every_train_record_has_host_memory_and_no_gpu_field_on_cpu(tmp_path, dataset):
    make_trainer(tmp_path, dataset, ["train.max_steps=3"], []).fit()
    steps = [r for r in read_metrics(str(tmp_path)) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(isinstance(r["memory_rss_bytes"], int) and r["memory_rss_bytes"] > 2**20 for r in steps)
    assert not any("memory_gpu_peak_bytes" in r for r in steps)
