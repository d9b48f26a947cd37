"""`dist-llm bench dedup` and `bench long-doc` on tiny inputs: the figures they report are sane."""

from __future__ import annotations

import pytest

from data_prep.tokenizer import LONG_CHARS
from dist_llm.bench.prep_scale import bench_dedup, bench_long_doc, format_table


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Shared, so the default corpus both benches draw their text from is built once."""
    return str(tmp_path_factory.mktemp("bench"))


def test_bench_dedup_merges_the_corpus_with_each_piece_size(work_dir, sp_model):
    small, big = bench_dedup([2000], [100, 10**6], workers=1, tokenizer=sp_model, work_dir=work_dir)
    assert (small.piece_keys, big.piece_keys) == (100, 10**6)
    assert small.pieces > 5 and big.pieces == 1
    assert small.kept_docs == big.kept_docs and small.duplicates == big.duplicates > 500
    assert 50 < small.merge_peak_rss_mb < 1000 and 50 < big.merge_peak_rss_mb < 1000
    assert "merge peak RSS MB" in format_table([small, big])


def test_bench_long_doc_preps_one_document_over_the_piece_threshold(work_dir, sp_model):
    [result] = bench_long_doc(1.2 * LONG_CHARS / 1e6, tokenizer=sp_model, work_dir=work_dir)
    assert result.tokens > 100_000 and result.peak_pss_mb > 0
    assert "peak PSS MB" in format_table([result])
