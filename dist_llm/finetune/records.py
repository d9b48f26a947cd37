"""Labelled files as records: one dict of fields per example, each with the `file:line` it came from,
so every later error (missing field, unknown label) can point at the line to fix."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dist_llm.errors import DataError
from dist_llm.finetune.config import file_format


@dataclass(frozen=True)
class Record:
    where: str
    """"path:line" of the record's first line."""
    fields: dict[str, Any]


def _open_text(path: str) -> io.TextIOBase:
    # utf-8-sig: spreadsheet programs write a byte-order mark that would otherwise become part
    # of the first CSV column's name. newline="" is what the csv module asks for.
    if path.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _jsonl(path: str, fh: io.TextIOBase) -> Iterator[Record]:
    for number, line in enumerate(fh, start=1):
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno}); each line "
                "must be one JSON object"
            ) from None
        if not isinstance(fields, dict):
            raise DataError(
                f"{path}:{number}: a JSON {type(fields).__name__}, not an object; each line must "
                'be one object such as {"text": ..., "label": ...}'
            )
        yield Record(f"{path}:{number}", fields)


def _csv(path: str, fh: io.TextIOBase) -> Iterator[Record]:
    reader = csv.DictReader(fh)
    if reader.fieldnames is None:
        return
    start = reader.line_num + 1
    for row in reader:
        where = f"{path}:{start}"
        start = reader.line_num + 1  # a quoted field may span lines: the next record starts after
        if None in row:
            raise DataError(
                f"{where}: {len(row[None]) + len(reader.fieldnames)} values but the header has "
                f"{len(reader.fieldnames)} columns; quote values that contain commas"
            )
        if not any(value.strip() for value in row.values() if value is not None):
            continue  # a blank line
        yield Record(where, row)


def read_records(path: str) -> list[Record]:
    """Every record of a .jsonl / .csv file (optionally .gz), blank lines skipped. Raises DataError
    for an unreadable or empty file, bad JSON, or a CSV row wider than its header."""
    kind = file_format(path)
    if kind is None:
        raise DataError(f"{path}: unsupported file type; use .jsonl, .jsonl.gz, .csv or .csv.gz")
    try:
        with _open_text(path) as fh:
            records = list(_jsonl(path, fh) if kind == "jsonl" else _csv(path, fh))
    except (OSError, UnicodeDecodeError, csv.Error, EOFError) as exc:
        raise DataError(f"{path}: cannot be read as {kind} ({exc})") from None
    if not records:
        raise DataError(
            f"{path}: no examples (the file is empty or holds only blank lines"
            f"{' and a header' if kind == 'csv' else ''})"
        )
    return records
