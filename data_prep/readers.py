"""Readers: turn input paths (text files, directories, JSONL) into `Document`s.

Every document carries its source file and 1-based line so that any later error can point at
the exact input. Bad input is routed through one `ErrorPolicy`: it either raises `DataError`
(default, so silent data loss never happens by accident) or counts the problem by reason so the
manifest records what was dropped.

Splitting happens on raw bytes before decoding (a UTF-8 multi-byte sequence never contains the
newline byte), so one bad byte costs only its own document under `--on-error skip`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from dist_llm.errors import DataError

FORMATS = ("auto", "text", "jsonl")
TEXT_SPLITS = ("file", "line", "paragraph")
ON_ERROR = ("raise", "skip")
JSONL_SUFFIXES = (".jsonl", ".json")
_UTF8_BOM = b"\xef\xbb\xbf"
_SKIP_HINT = "pass --on-error skip to skip and count such documents"


@dataclass(frozen=True)
class Document:
    """One document: its text plus where it came from (for error messages)."""

    text: str
    source_file: str
    line: int


@dataclass
class ErrorPolicy:
    """Raise on bad input, or skip it and count it by reason (counts go into the manifest)."""

    on_error: str = "raise"
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise DataError(f"--on-error {self.on_error!r} is not one of {ON_ERROR}")

    def bad(self, reason: str, where: str, what: str) -> None:
        """Report bad input `what` at `where` ("file:line"); raises unless skipping."""
        if self.on_error == "raise":
            raise DataError(f"{where}: {what} ({reason}); fix the input or {_SKIP_HINT}")
        self.counts[reason] += 1

    def summary(self) -> dict:
        """The manifest's `skipped` block."""
        return {"total": sum(self.counts.values()), "by_reason": dict(sorted(self.counts.items()))}


def resolve_inputs(paths: Iterable[str], policy: ErrorPolicy) -> list[str]:
    """Expand directories recursively (sorted, hidden entries skipped) into a file list.

    Pipes are accepted, but without --tokenizer the inputs are read twice (tokenizer training,
    then tokenizing), so a pipe would be empty on the second read; pass --tokenizer with pipes.
    """
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files.extend(os.path.join(root, n) for n in sorted(names) if not n.startswith("."))
        elif os.path.exists(path):  # regular file, or a pipe such as <(zcat corpus.gz)
            files.append(path)
        else:
            policy.bad("missing_path", path, "input path does not exist")
    return files


def detect_format(path: str, fmt: str) -> str:
    """`auto` picks jsonl for .jsonl/.json files and text for everything else."""
    if fmt not in FORMATS:
        raise DataError(f"--format {fmt!r} is not one of {FORMATS}")
    if fmt != "auto":
        return fmt
    return "jsonl" if path.lower().endswith(JSONL_SUFFIXES) else "text"


def _read_bytes(path: str, policy: ErrorPolicy) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise DataError(
            f"{path}: cannot read input ({exc.strerror}); check the path and permissions"
        ) from exc
    if not data:
        policy.bad("empty_file", f"{path}:1", "file is empty")
        return None
    return data[len(_UTF8_BOM):] if data.startswith(_UTF8_BOM) else data


def _decode(raw: bytes, path: str, line: int, policy: ErrorPolicy) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = line + raw[: exc.start].count(b"\n")
        policy.bad("invalid_utf8", f"{path}:{bad_line}", f"invalid UTF-8 byte at offset {exc.start}")
        return None


def _text_units(data: bytes, split: str) -> Iterator[tuple[int, bytes]]:
    """(first line, raw bytes) of each document. Blank lines separate, they are not documents."""
    if split == "file":
        yield 1, data
        return
    lines = data.split(b"\n")
    if split == "line":
        for number, raw in enumerate(lines, 1):
            if raw.strip():
                yield number, raw.rstrip(b"\r")
        return
    start, block = 0, []
    for number, raw in enumerate(lines, 1):
        if raw.strip():
            start = start or number
            block.append(raw.rstrip(b"\r"))
        elif block:
            yield start, b"\n".join(block)
            start, block = 0, []
    if block:
        yield start, b"\n".join(block)


def read_text(path: str, split: str, policy: ErrorPolicy) -> Iterator[Document]:
    """Documents of a UTF-8 text file: the whole file, each line, or each paragraph."""
    if split not in TEXT_SPLITS:
        raise DataError(f"--text-split {split!r} is not one of {TEXT_SPLITS}")
    data = _read_bytes(path, policy)
    if data is None:
        return
    if not data.strip():
        policy.bad("blank_document", f"{path}:1", "file contains only whitespace")
        return
    for line, raw in _text_units(data, split):
        text = _decode(raw, path, line, policy)
        if text is None:
            continue
        if not text.strip():  # only reachable for split=file with Unicode-only whitespace
            policy.bad("blank_document", f"{path}:{line}", "document is blank")
            continue
        yield Document(text, path, line)


def read_jsonl(path: str, text_field: str, policy: ErrorPolicy) -> Iterator[Document]:
    """One document per JSON object line, text taken from `text_field`; blank lines ignored."""
    data = _read_bytes(path, policy)
    if data is None:
        return
    for number, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        line = _decode(raw, path, number, policy)
        if line is None:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            policy.bad("bad_json", where, f"malformed JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(record, dict):
            policy.bad("bad_json", where, f"expected a JSON object, got {type(record).__name__}")
            continue
        if text_field not in record:
            policy.bad(
                "missing_field", where,
                f"no {text_field!r} field (keys: {sorted(record)[:8]}); set --text-field",
            )
            continue
        text = record[text_field]
        if not isinstance(text, str):
            policy.bad(
                "non_string_field", where,
                f"field {text_field!r} is {type(text).__name__}, expected a string",
            )
            continue
        if not text.strip():
            policy.bad("blank_document", where, f"field {text_field!r} is blank")
            continue
        yield Document(text, path, number)


def read_documents(
    files: Iterable[str],
    policy: ErrorPolicy,
    fmt: str = "auto",
    text_field: str = "text",
    text_split: str = "file",
) -> Iterator[Document]:
    """All documents of `files` (already resolved by `resolve_inputs`), in order."""
    for path in files:
        if detect_format(path, fmt) == "jsonl":
            yield from read_jsonl(path, text_field, policy)
        else:
            yield from read_text(path, text_split, policy)
