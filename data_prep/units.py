"""Work units: the deterministic plan that splits a corpus into independent pieces of work.

Why units: every unit is read, filtered, tokenized and written by one worker on its own, so the
work spreads over processes (`--workers`) and machines (`--num-parts/--part`), a re-run skips
units that already finished, and the token stream (units concatenated in index order) is the
same whoever processed which unit. The plan depends only on the inputs and `unit_bytes`, never
on the worker or part count.

A unit is one or more `Segment`s: a byte range of a large uncompressed text/JSONL file (a
document belongs to the segment its first byte falls in, so splitting never changes the
documents), a whole compressed file (gzip/zstd streams cannot be entered mid-way), a range of
Parquet row groups, or a row range of a Hugging Face arrow file. Small files are grouped so a
unit holds about `unit_bytes` of input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("text", "jsonl", "parquet", "hf")
COMPRESSIONS = ("gzip", "zstd")


@dataclass(frozen=True)
class InputFile:
    """One resolved input file (local path or URI) and what is needed to plan and re-check it."""

    uri: str
    kind: str  # one of KINDS
    compression: str | None  # None or one of COMPRESSIONS
    size: int  # bytes on storage (compressed size for compressed files)
    identity: str  # changes when the file changes: "size:mtime_ns" locally, "size:etag" on s3
    rows: int = 0  # parquet / hf: number of rows (0 for text/jsonl)
    # parquet: compressed bytes of the text column per row group, so planning needs no second
    # footer read and depends on the InputFile alone
    row_group_bytes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Segment:
    """A contiguous piece of one input file.

    text/jsonl uncompressed: bytes [start, stop); documents *starting* in the range belong here.
    text/jsonl compressed: the whole file (start=0, stop=-1).
    parquet: row groups [start, stop).  hf: rows [start, stop) of one arrow file.
    """

    uri: str
    kind: str
    compression: str | None
    start: int
    stop: int


@dataclass(frozen=True)
class WorkUnit:
    """An independent piece of work; `index` is its position in the token stream."""

    index: int
    segments: tuple[Segment, ...]
    size: int  # approximate input bytes, for balancing and progress


@dataclass(frozen=True)
class ReadOptions:
    """How inputs are interpreted; part of the prep identity (changing it changes the output)."""

    format: str = "auto"  # auto | text | jsonl | parquet | hf
    text_field: str = "text"  # JSONL key / Parquet or HF column holding the document text
    text_split: str = "file"  # text files: one document per file | line | paragraph
    hf_split: str = "train"  # split of a saved DatasetDict / of load_dataset
    hf_cache_dir: str = ""  # where load_dataset() builds its arrow cache (set by the pipeline)


@dataclass
class Plan:
    files: list[InputFile] = field(default_factory=list)
    units: list[WorkUnit] = field(default_factory=list)
