"""Columnar inputs: Parquet files and Hugging Face datasets (Arrow stream files).

Both keep the text in one column, so a reader needs only that column and only the rows of its
segment: Parquet by row groups (the footer says where each one lies), HF arrow files by row
ranges (they are Arrow IPC streams, memory-mapped when local, so rows before a segment cost
only their batch headers). Planning facts (rows, row-group sizes, schema) come from footers and
stream headers, never from the data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from dist_llm.errors import DataError

DATASET_DICT = "dataset_dict.json"  # written by DatasetDict.save_to_disk, next to one dir per split
DATASET_STATE = "state.json"  # written by Dataset.save_to_disk: lists its arrow files in order
DATASET_INFO = "dataset_info.json"
# `datasets.load_dataset` builders for plain files given with --format hf, by extension.
BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}


def text_column_problem(schema: pa.Schema, column: str) -> str | None:
    """Why `column` cannot be the text column of `schema` (naming the columns there), or None."""
    columns = ", ".join(f"{f.name}: {f.type}" for f in schema)
    if column not in schema.names:
        return f"no column {column!r} (columns: {columns}); set --text-field"
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        return f"column {column!r} is {kind}, not a string column (columns: {columns}); set --text-field"
    return None


@dataclass(frozen=True)
class ParquetLayout:
    """What planning needs from a Parquet footer."""

    schema: pa.Schema
    rows: int
    group_bytes: tuple[int, ...]  # compressed bytes of the text column in each row group


def parquet_layout(source: IO[bytes], column: str) -> ParquetLayout:
    """Read the footer only. Group sizes count the text column alone: that is what is read, and
    a wide table (say, with embeddings) would otherwise look many times more work than it is."""
    meta = pq.ParquetFile(source).metadata
    schema = meta.schema.to_arrow_schema()
    if text_column_problem(schema, column) is not None:
        return ParquetLayout(schema, meta.num_rows, ())
    leaf = [meta.schema.column(i).path for i in range(meta.num_columns)].index(column)
    sizes = tuple(meta.row_group(g).column(leaf).total_compressed_size for g in range(meta.num_row_groups))
    return ParquetLayout(schema, meta.num_rows, sizes)


def parquet_texts(
    source: IO[bytes], start: int, stop: int, column: str, batch_rows: int
) -> Iterator[tuple[int, list[str | None]]]:
    """(first row, values) of batches of `column` in row groups [start, stop), nothing else read."""
    if start >= stop:
        return
    parquet = pq.ParquetFile(source)
    row = sum(parquet.metadata.row_group(g).num_rows for g in range(start))
    # One thread: prep runs one such reader per CPU already.
    for batch in parquet.iter_batches(
        batch_size=batch_rows, row_groups=list(range(start, stop)), columns=[column], use_threads=False
    ):
        yield row, batch.column(0).to_pylist()
        row += batch.num_rows


def _arrow_stream(source: str | IO[bytes]) -> pa.ipc.RecordBatchStreamReader:
    """A local path is memory-mapped (skipping rows is free); a remote file is streamed."""
    data = pa.memory_map(source) if isinstance(source, str) else pa.PythonFile(source, mode="r")
    return pa.ipc.open_stream(data)


def arrow_schema(source: str | IO[bytes]) -> pa.Schema:
    """The schema of an arrow stream file: its first message only."""
    return _arrow_stream(source).schema


def arrow_rows(path: str) -> int:
    """Rows of a local arrow stream file, from its batch headers (memory-mapped, no data read)."""
    return sum(batch.num_rows for batch in _arrow_stream(path))


def arrow_texts(
    source: str | IO[bytes], start: int, stop: int, column: str
) -> Iterator[tuple[int, list[str | None]]]:
    """(first row, values) of `column` for rows [start, stop) (stop -1: to the end)."""
    reader = _arrow_stream(source)
    index = reader.schema.get_field_index(column)
    row = 0
    for batch in reader:
        if 0 <= stop <= row:
            return
        low = max(start - row, 0)
        high = batch.num_rows if stop < 0 else min(stop - row, batch.num_rows)
        if low < high:
            yield row + low, batch.column(index).slice(low, high - low).to_pylist()
        row += batch.num_rows


def saved_dataset_roots(paths: Iterable[str]) -> list[str]:
    """Directories, among the parents of `paths`, that hold a dataset written by `save_to_disk`
    (a Dataset: state.json + dataset_info.json; a DatasetDict: dataset_dict.json)."""
    names: dict[str, set[str]] = {}
    for path in paths:
        parent, _, name = path.rpartition("/")
        names.setdefault(parent, set()).add(name)
    dicts = {d for d, n in names.items() if DATASET_DICT in n}
    singles = {
        d
        for d, n in names.items()
        if {DATASET_STATE, DATASET_INFO} <= n and d.rpartition("/")[0] not in dicts
    }
    return sorted(dicts | singles)


def _read_json(fs: fsspec.AbstractFileSystem, path: str) -> dict:
    try:
        return json.loads(fs.cat_file(path))
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path}: cannot read this Hugging Face dataset file ({exc}); "
            "re-save the dataset with save_to_disk"
        ) from None


def saved_dataset_files(fs: fsspec.AbstractFileSystem, root: str, split: str) -> list[str]:
    """The arrow files of a saved dataset, in order (split `split` of a DatasetDict)."""
    if fs.exists(f"{root}/{DATASET_DICT}"):
        splits = _read_json(fs, f"{root}/{DATASET_DICT}").get("splits", [])
        if split not in splits:
            raise DataError(
                f"{root}: the saved DatasetDict has no split {split!r} (splits: {splits}); set --hf-split"
            )
        root = f"{root}/{split}"
    state = _read_json(fs, f"{root}/{DATASET_STATE}")
    try:
        return [f"{root}/{entry['filename']}" for entry in state["_data_files"]]
    except (KeyError, TypeError):
        raise DataError(
            f"{root}/{DATASET_STATE}: no `_data_files` list; re-save the dataset with save_to_disk"
        ) from None


def builder_for(path: str) -> str:
    """The `load_dataset` builder for a plain file (text for anything unknown)."""
    name = path.lower()
    return next((b for ext, b in BUILDERS.items() if name.endswith(ext)), "text")


def load_with_datasets(paths: list[str], builder: str, split: str, cache_dir: str) -> list[str]:
    """Build plain files into a HF dataset with `load_dataset` and return its arrow cache files.

    The cache is keyed by the files' contents, so a re-run (or a resume) reuses it.
    """
    import datasets  # imported here: it takes seconds and only --format hf needs it

    dataset = datasets.load_dataset(
        builder, data_files={split: paths}, split=split, cache_dir=cache_dir or None
    )
    return [entry["filename"] for entry in dataset.cache_files]
