"""Resolving inputs: directories, globs, kind and compression detection, identities, missing paths."""

import os

import pytest

from data_prep.inputs import detect, resolve_inputs
from data_prep.readers import ErrorPolicy
from data_prep.units import InputFile, ReadOptions
from dist_llm.errors import DataError


def resolve(paths, on_error="raise", **options):
    policy = ErrorPolicy(on_error)
    return resolve_inputs([str(p) for p in paths], ReadOptions(**options), policy), policy


def make_tree(root):
    for name in [
        "b/z.txt",
        "a.jsonl",
        "a/x.txt",
        ".hidden.txt",
        ".git/x.txt",
        "b/.cache/y.txt",
        "c/d.txt.gz",
        "data",
        "e.jsonl.zst",
        "f.json",
        "g.jsonl.ZSTD",
        "a-b/h.md",
    ]:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * len(name))


def test_directories_are_recursive_sorted_hidden_skipped_and_kinds_detected(tmp_path):
    make_tree(tmp_path)
    files, _ = resolve([tmp_path])
    rel = [(os.path.relpath(f.uri, tmp_path), f.kind, f.compression, f.size) for f in files]
    assert rel == [  # sorted by path component: a/ < a-b/ < a.jsonl
        ("a/x.txt", "text", None, 7),
        ("a-b/h.md", "text", None, 8),
        ("a.jsonl", "jsonl", None, 7),
        ("b/z.txt", "text", None, 7),
        ("c/d.txt.gz", "text", "gzip", 10),
        ("data", "text", None, 4),
        ("e.jsonl.zst", "jsonl", "zstd", 11),
        ("f.json", "jsonl", None, 6),
        ("g.jsonl.ZSTD", "jsonl", "zstd", 12),
    ]


def test_explicit_format_overrides_extensions_but_not_compression():
    assert detect("x.txt", "jsonl") == ("jsonl", None)
    assert detect("x.jsonl.gz", "text") == ("text", "gzip")
    assert detect("x.parquet", "auto") == ("parquet", None)
    assert detect("x.PARQUET", "text") == ("text", None)
    assert detect("notes.gz", "auto") == ("text", "gzip")


def test_arguments_keep_their_order_and_globs_expand(tmp_path):
    make_tree(tmp_path)
    files, _ = resolve([tmp_path / "f.json", f"{tmp_path}/*.jsonl*", f"{tmp_path}/**/*.txt"])
    assert [os.path.relpath(f.uri, tmp_path) for f in files] == [
        "f.json",
        "a.jsonl",
        "e.jsonl.zst",
        "g.jsonl.ZSTD",
        "a/x.txt",
        "b/z.txt",
    ]  # no hidden entries


def test_identity_is_size_and_mtime_ns_and_changes_with_the_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("hello")
    os.utime(path, ns=(1, 1_000_000_123))
    (first,), _ = resolve([path])
    assert first == InputFile(str(path), "text", None, 5, "5:1000000123")
    os.utime(path, ns=(1, 2_000_000_456))
    (second,), _ = resolve([path])
    assert second.identity == "5:2000000456"


def test_missing_paths_and_empty_globs(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match=f"{missing}: input path does not exist .missing_path.; fix"):
        resolve([missing])
    (tmp_path / "real.txt").write_text("here")
    files, policy = resolve([missing, tmp_path / "*.none", tmp_path / "real.txt"], on_error="skip")
    assert [f.uri for f in files] == [str(tmp_path / "real.txt")]
    assert policy.counts == {"missing_path": 2}


@pytest.mark.parametrize(
    "options,flag", [({"format": "csv"}, "--format"), ({"text_split": "word"}, "--text-split")]
)
def test_bad_options_are_named(tmp_path, options, flag):
    with pytest.raises(DataError, match=flag):
        resolve([tmp_path], **options)


def test_pipes_are_refused_with_the_fix(tmp_path):
    pipe = tmp_path / "corpus.fifo"
    os.mkfifo(pipe)
    with pytest.raises(DataError, match=f"{pipe}: not a regular file .*write the data to a file first"):
        resolve([pipe], on_error="skip")
