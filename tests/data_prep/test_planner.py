"""Planning: a pure function of the input files and the unit size (no file is ever opened here)."""

import pytest

from data_prep.planner import plan_units
from data_prep.units import InputFile, ReadOptions, Segment
from dist_llm.errors import DataError

LINES = ReadOptions(text_split="line")


def text(uri, size, kind="text", compression=None):
    return InputFile(uri, kind, compression, size, f"{size}:0")


def spans(units):
    return [[(s.uri, s.start, s.stop) for s in u.segments] for u in units]


def test_large_files_split_evenly_and_small_files_group():
    files = [text("big.jsonl", 250, "jsonl"), text("s1.txt", 10), text("s2.txt", 30), text("s3.txt", 90)]
    units = plan_units(files, 100, LINES)  # the files do not exist: planning reads nothing
    assert spans(units) == [
        [("big.jsonl", 0, 83)],
        [("big.jsonl", 83, 166)],
        [("big.jsonl", 166, 250), ("s1.txt", 0, 10)],
        [("s2.txt", 0, 30)],  # s3 would push this unit past 100 bytes
        [("s3.txt", 0, 90)],
    ]
    assert [u.index for u in units] == [0, 1, 2, 3, 4]
    assert [u.size for u in units] == [83, 83, 94, 30, 90]
    assert plan_units(files, 100, LINES) == units  # deterministic


def test_whole_file_text_and_compressed_files_are_never_split():
    files = [
        text("doc.txt", 500),
        text("c.jsonl.gz", 500, "jsonl", "gzip"),
        text("t.txt.zst", 9, "text", "zstd"),
    ]
    units = plan_units(files, 100, ReadOptions(text_split="file"))
    assert spans(units) == [[("doc.txt", 0, 500)], [("c.jsonl.gz", 0, -1)], [("t.txt.zst", 0, -1)]]
    assert units[1].segments[0] == Segment("c.jsonl.gz", "jsonl", "gzip", 0, -1)
    assert spans(plan_units(files[:1], 100, LINES)) == [[("doc.txt", a, a + 100)] for a in range(0, 500, 100)]


def test_parquet_splits_on_row_groups_by_their_bytes():
    parquet = InputFile(
        "t.parquet", "parquet", None, 999, "999:0", rows=600, row_group_bytes=(40, 40, 40, 150, 10, 10)
    )
    assert spans(plan_units([parquet], 100, LINES)) == [
        [("t.parquet", 0, 2)],
        [("t.parquet", 2, 3)],
        [("t.parquet", 3, 4)],
        [("t.parquet", 4, 6)],
    ]


def test_hf_files_split_by_rows_locally_and_stay_whole_remotely():
    local = InputFile("/data/ds/data-00000-of-00001.arrow", "hf", None, 1000, "1000:0", rows=10)
    remote = InputFile("s3://b/ds/data-00000-of-00001.arrow", "hf", None, 1000, "1000:etag", rows=0)
    units = plan_units([local, remote], 300, LINES)
    assert [[(s.start, s.stop) for s in u.segments] for u in units] == [
        [(0, 2)],
        [(2, 5)],
        [(5, 7)],
        [(7, 10)],
        [(0, -1)],
    ]
    assert [u.size for u in units] == [200, 300, 200, 300, 1000]


def test_tiny_units_and_empty_files():
    files = [text("a.txt", 3), text("empty.txt", 0), text("b.txt", 2)]
    assert spans(plan_units(files, 1, LINES)) == [
        [("a.txt", 0, 1)],
        [("a.txt", 1, 2)],
        [("a.txt", 2, 3)],
        [("empty.txt", 0, 0), ("b.txt", 0, 1)],  # the empty file still gets read (and reported)
        [("b.txt", 1, 2)],
    ]


def test_unit_size_must_be_positive():
    with pytest.raises(DataError, match="--unit-mb"):
        plan_units([text("a.txt", 3)], 0, LINES)
