import json
import os

from data_prep.default_corpus import MARKER_FILE, build_default_corpus


def test_default_corpus_is_real_deterministic_and_cached(tmp_path):
    paths = build_default_corpus(str(tmp_path / "a"), workers=2)
    records = [json.loads(line) for p in paths for line in open(p, encoding="utf-8")]
    assert len(records) > 3000  # thousands of stdlib docstrings
    assert sum(len(r["text"]) for r in records) > 1_000_000
    assert all(len(r["text"]) >= 40 and ":" in r["source"] for r in records)
    sources = {r["source"] for r in records}
    assert "json:<module>" in sources
    assert any(s.startswith("pydoc_data.topics:") for s in sources)
    assert not any(".test." in s or s.startswith("test.") for s in sources)

    # Same bytes with a different worker count (ordered pool results).
    again = build_default_corpus(str(tmp_path / "b"), workers=1)
    assert [open(p, "rb").read() for p in paths] == [open(p, "rb").read() for p in again]

    # Cached: a complete build is reused, not rebuilt.
    mtimes = [os.path.getmtime(p) for p in paths]
    assert build_default_corpus(str(tmp_path / "a")) == paths
    assert [os.path.getmtime(p) for p in paths] == mtimes
    assert (tmp_path / "a" / MARKER_FILE).exists()
