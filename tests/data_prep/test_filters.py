"""Filters and part selection: small pure functions, tested directly."""

from __future__ import annotations

import pytest

from data_prep.filters import DocumentFilter, FilterConfig, doc_hash, is_validation
from data_prep.parts import resolve_part
from dist_llm.errors import DataError


def test_document_filter_counts_each_removal():
    f = DocumentFilter(FilterConfig(normalize="NFKC", min_chars=3, max_chars=10, min_tokens=2, max_tokens=5))
    assert f.text("ab") is None and f.text("x" * 11) is None
    kept = f.text("ｆｕｌｌ")
    assert kept == ("full", doc_hash("full"))
    assert f.text("full") is None  # the same document after normalization
    assert [f.tokens(n) for n in (1, 2, 5, 6)] == [False, True, True, False]
    assert f.removed == {"min_chars": 1, "max_chars": 1, "duplicate": 1, "min_tokens": 1, "max_tokens": 1}
    assert DocumentFilter(FilterConfig(dedup="none")).text("a") is not None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"normalize": "NFX"}, "--normalize 'NFX'"),
        ({"dedup": "fuzzy"}, "--dedup 'fuzzy'"),
        ({"min_chars": -1}, "--min-chars -1"),
        ({"min_tokens": 9, "max_tokens": 3}, "--min-tokens 9 is larger"),
    ],
)
def test_filter_config_errors_name_the_flag(kwargs, message):
    with pytest.raises(DataError, match=message):
        FilterConfig(**kwargs).validate()


def test_split_decision_is_stable_and_proportional():
    digests = [doc_hash(f"document {i}") for i in range(20000)]
    share = sum(is_validation(d, 0.1) for d in digests) / len(digests)
    assert 0.09 < share < 0.11
    assert not any(is_validation(d, 0.0) for d in digests)
    assert doc_hash("é") == doc_hash("é") != doc_hash("e")


def test_part_comes_from_flags_then_slurm_array_then_torchrun():
    assert resolve_part(None, None, {}) == (1, 0)
    assert resolve_part(4, 3, {"RANK": "1", "WORLD_SIZE": "2"}) == (4, 3)
    env = {
        "SLURM_ARRAY_TASK_COUNT": "8",
        "SLURM_ARRAY_TASK_ID": "12",
        "SLURM_ARRAY_TASK_MIN": "10",
        "RANK": "1",
        "WORLD_SIZE": "2",
    }
    assert resolve_part(None, None, env) == (8, 2)
    assert resolve_part(None, None, {"RANK": "1", "WORLD_SIZE": "2"}) == (2, 1)
    with pytest.raises(DataError, match="SLURM_ARRAY_TASK_COUNT=2, SLURM_ARRAY_TASK_ID=5"):
        resolve_part(None, None, {"SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_ID": "5"})
