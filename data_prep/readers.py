"""Readers: turn the segments of a `WorkUnit` into `Document`s.

Text and JSONL are read in blocks of `BLOCK_BYTES` and split on raw bytes before decoding (a UTF-8
multi-byte sequence never contains the newline byte), so memory stays bounded whatever the file
size (only one document must fit) and one bad byte costs only its own document under
`--on-error skip`. A byte-range segment owns the documents whose first byte lies in it: its
reader starts at the first document start at or after `start` and reads past `stop` to finish
its last document, so concatenating all segments gives exactly the documents of the whole file.

Bad input goes through one `ErrorPolicy`: it raises `DataError` naming `file:line` (default, so
silent data loss never happens by accident) or counts the problem by reason for the manifest.
Line numbers of byte-range segments are only computed when an error must name one (counting
newlines from the file start), never on the hot path.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import IO, NamedTuple

import fsspec
import orjson
import pyarrow as pa
from fsspec.core import url_to_fs

from data_prep import columnar
from data_prep.units import KINDS, ReadOptions, Segment, WorkUnit
from dist_llm.errors import DataError
from dist_llm.uri import is_local

FORMATS = ("auto", *KINDS)
TEXT_SPLITS = ("file", "line", "paragraph")
ON_ERROR = ("raise", "skip")
BLOCK_BYTES = 4 << 20  # read size: large enough that per-block overhead vanishes, small for memory
_CHECK_BYTES = 64 << 10  # read size of the integrity pass over compressed files
HEAD_BYTES = 8192  # a NUL byte in this many leading bytes marks a binary file (git's rule)
COLUMN_BATCH_ROWS = 4096  # Parquet rows decoded per batch
_UTF8_BOM = b"\xef\xbb\xbf"
_BLANK = b" \t\r\x0b\x0c"  # what bytes.isspace() accepts, the newline aside
# orjson parses a JSONL line ~3x faster than the stdlib; a line it rejects goes to `json`, so what
# is accepted (NaN, huge integers) and how errors are worded stay the stdlib's.
_NOT_PARSED = object()
_SKIP_HINT = "pass --on-error skip to skip and count such documents"
# Bounded retries so a wrong or dead endpoint fails in seconds, not minutes: botocore's default
# (legacy mode, 5 attempts) times s3fs's own retries can hang for minutes on a black-holed host.
_S3_OPTIONS = {"config_kwargs": {"connect_timeout": 5, "retries": {"max_attempts": 3, "mode": "standard"}}}


class Document(NamedTuple):
    """One document. A NamedTuple because millions are created on the hot path."""

    text: str
    source: str  # URI of the input file
    offset: int  # text/JSONL: byte offset in the (decompressed) file; parquet/hf: row index


@dataclass
class ErrorPolicy:
    """Raise on bad input, or skip it and count it by reason (counts go into the manifest)."""

    on_error: str = "raise"
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise DataError(f"--on-error {self.on_error!r} is not one of {ON_ERROR}")

    def bad(self, reason: str, where: str | Callable[[], str], what: str) -> None:
        """Report bad input `what` at `where` ("file:line"); raises unless skipping.

        `where` may be a callable so that a costly location (a line number found by re-reading
        the file) is only computed when it is shown.
        """
        if self.on_error == "raise":
            where = where() if callable(where) else where
            raise DataError(f"{where}: {what} ({reason}); fix the input or {_SKIP_HINT}")
        self.counts[reason] += 1

    def summary(self) -> dict:
        """The manifest's `skipped` block."""
        return {"total": sum(self.counts.values()), "by_reason": dict(sorted(self.counts.items()))}


# --- storage access ----------------------------------------------------------------------------


def input_fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for an input URI (bounded retries on S3) and the path inside it."""
    return url_to_fs(uri, **(_S3_OPTIONS if uri.startswith(("s3://", "s3a://")) else {}))


def endpoint_of(uri: str) -> str:
    """Where an input URI is fetched from, in words, for error messages."""
    if is_local(uri):
        return "the local filesystem"
    if uri.startswith(("s3://", "s3a://")):
        url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return f"endpoint {url}" if url else "the default AWS endpoint (AWS_ENDPOINT_URL is not set)"
    return f"the {uri.split('://', 1)[0]}:// store"


def storage_error(uri: str, exc: BaseException) -> DataError:
    """A one-line DataError for a failed read: a broken setup, so it is never skipped."""
    if is_local(uri):
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return DataError(f"{uri}: cannot read it ({reason}); check the path and its permissions")
    return DataError(
        f"{uri}: cannot read it from {endpoint_of(uri)} ({type(exc).__name__}: {exc}); check that the "
        "endpoint is up and AWS_ENDPOINT_URL points at it, the credentials (AWS_ACCESS_KEY_ID / "
        "AWS_SECRET_ACCESS_KEY) and that the bucket exists"
    )


def open_input(uri: str) -> IO[bytes]:
    """Open an input file for reading; failures become DataError naming the URI."""
    fs, path = input_fs(uri)
    try:
        return fs.open(path, "rb", **({} if is_local(uri) else {"block_size": BLOCK_BYTES}))
    except FileNotFoundError:
        raise DataError(
            f"{uri}: input file disappeared after the inputs were listed; restore it "
            "or re-run prep so it plans again"
        ) from None
    except Exception as exc:  # botocore's errors are not OSError
        raise storage_error(uri, exc) from None


class _CorruptStream(DataError):
    """A compressed stream that cannot be decompressed: truncated or not in its format."""

    def __init__(self, uri: str, reason: str, detail: str) -> None:
        super().__init__(f"{uri}: {detail} ({reason})")
        self.reason, self.detail = reason, detail


class _Stream:
    """The bytes of one input file, decompressed on the fly for gzip/zstd.

    Decompression is pyarrow's streaming codec, so no extra dependency and bounded memory.
    """

    def __init__(self, uri: str, compression: str | None) -> None:
        self.uri, self.compression = uri, compression
        self._raw = open_input(uri)
        self._data = (
            pa.CompressedInputStream(pa.PythonFile(self._raw, mode="r"), compression)
            if compression
            else self._raw
        )

    def read(self, size: int) -> bytes:
        try:
            return self._data.read(size)
        except DataError:
            raise
        except Exception as exc:
            if self.compression and isinstance(exc, OSError) and exc.errno is None:
                if "truncated" in str(exc).lower():
                    raise _CorruptStream(
                        self.uri, "truncated_file", f"{self.compression} stream is truncated"
                    ) from None
                raise _CorruptStream(
                    self.uri, "corrupt_file", f"not a valid {self.compression} stream ({exc})"
                ) from None
            raise storage_error(self.uri, exc) from None

    def seek(self, pos: int) -> None:
        self._raw.seek(pos)

    def blocks(self) -> Iterator[bytes]:
        while block := self.read(BLOCK_BYTES):
            yield block

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self._raw.close()


def _file_head(uri: str) -> bytes:
    """The first HEAD_BYTES of an uncompressed file, in one small ranged read."""
    fs, path = input_fs(uri)
    try:
        return fs.cat_file(path, start=0, end=HEAD_BYTES)
    except Exception as exc:
        raise storage_error(uri, exc) from None


def _line_at(seg: Segment, offset: int) -> int:
    """1-based line of byte `offset`: re-reads the file start, so only called for errors."""
    newlines, left = 0, offset
    with _Stream(seg.uri, seg.compression) as stream:
        for block in stream.blocks():
            if len(block) >= left:
                return newlines + block.count(b"\n", 0, left) + 1
            newlines += block.count(b"\n")
            left -= len(block)
    return newlines + 1


def _where(seg: Segment, offset: int, extra_lines: int = 0) -> Callable[[], str]:
    return lambda: f"{seg.uri}:{_line_at(seg, offset) + extra_lines}"


# --- text and JSONL ----------------------------------------------------------------------------


def _lines(blocks: Iterable[bytes], pos: int) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes without the newline) of each line, from `pos` (a line start) to the end.

    A line longer than a block is collected as a list of pieces and joined once, so a 100 MB
    line costs one copy, not one per block.
    """
    pending: list[bytes] = []
    for block in blocks:
        if pending:
            cut = block.find(b"\n")
            if cut < 0:
                pending.append(block)
                continue
            pending.append(block[:cut])
            line = b"".join(pending)
            pending = []
            yield pos, line
            pos += len(line) + 1
            block = block[cut + 1 :]
        lines = block.split(b"\n")
        tail = lines.pop()
        for line in lines:
            yield pos, line
            pos += len(line) + 1
        if tail:
            pending.append(tail)
    if pending:
        yield pos, b"".join(pending)


def _without_bom(lines: Iterator[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
    """Drop a UTF-8 byte order mark from the first line; it still starts at offset 0, so the
    segment holding byte 0 owns it."""
    pos, line = next(lines)
    yield pos, line[len(_UTF8_BOM) :]
    yield from lines


def _next_line_start(stream: _Stream, start: int, stop: int) -> int | None:
    """Offset of the first line starting in [start, stop) (start > 0): just past the first newline
    at or after `start - 1`, so a line starting exactly at `start` is kept. None: no such line.
    The scan ends at `stop`: inside one huge line every unit would otherwise read to its end."""
    stream.seek(start - 1)
    pos = start - 1
    for block in stream.blocks():
        cut = block.find(b"\n", 0, stop - 1 - pos)
        if cut >= 0:
            return pos + cut + 1
        pos += len(block)
        if pos >= stop - 1:
            return None
    return None


def _prev_line_blank(stream: _Stream, pos: int) -> bool:
    """Whether the line ending just before line start `pos` (> 0) is blank: scans backwards over
    whitespace only, so it costs a few bytes unless that line is a huge run of spaces."""
    end = pos - 1  # the newline ending the previous line
    while end > 0:
        begin = max(0, end - 4096)
        stream.seek(begin)
        kept = stream.read(end - begin).rstrip(_BLANK)
        if begin == 0 and kept == _UTF8_BOM:
            return True
        if kept:
            return kept.endswith(b"\n")
        end = begin
    return True


def _intact(seg: Segment, policy: ErrorPolicy) -> bool:
    """Decompress a whole compressed file once before using it, so a truncated or corrupt file
    is skipped entirely (or raises) instead of losing an arbitrary tail. Decompression costs a
    few percent of tokenization, and it is exact: no partial document slips through."""
    size = newlines = 0
    try:
        with _Stream(seg.uri, seg.compression) as stream:
            # Small reads: the codec delivers nothing of a read it cannot fill, and the error
            # should name a line close to where the data stops.
            while block := stream.read(_CHECK_BYTES):
                size += len(block)
                newlines += block.count(b"\n")
    except _CorruptStream as exc:
        policy.bad(
            exc.reason,
            f"{seg.uri}:{newlines + 1}",
            f"{exc.detail} after {size} decompressed bytes; the whole file is skipped",
        )
        return False
    return True


def _usable(seg: Segment, head: bytes, policy: ErrorPolicy) -> bool:
    """Empty and binary files are reported once, by the segment that starts the file."""
    if not head:
        if seg.start == 0:
            policy.bad("empty_file", f"{seg.uri}:1", "file is empty")
        return False
    nul = head.find(b"\0")
    if nul >= 0:
        if seg.start == 0:
            line = head.count(b"\n", 0, nul) + 1
            policy.bad(
                "binary_file",
                f"{seg.uri}:{line}",
                "NUL byte: not UTF-8 text (binary, or UTF-16: convert it to UTF-8)",
            )
        return False
    return True


def _text_segment(seg: Segment, opts: ReadOptions, policy: ErrorPolicy) -> Iterator[Document]:
    if seg.compression and not _intact(seg, policy):
        return
    paragraphs = seg.kind == "text" and opts.text_split == "paragraph"
    stop = sys.maxsize if seg.stop < 0 else seg.stop
    with _Stream(seg.uri, seg.compression) as stream:
        head = stream.read(HEAD_BYTES) if seg.start == 0 else _file_head(seg.uri)
        if not _usable(seg, head[:HEAD_BYTES], policy):
            return
        if seg.kind == "text" and opts.text_split == "file":
            yield from _whole_file(seg, head + b"".join(stream.blocks()), policy)
            return
        if seg.start == 0:
            lines = _lines(chain([head], stream.blocks()), 0)
            lines = _without_bom(lines) if head.startswith(_UTF8_BOM) else lines
            prev_blank = True
        else:
            pos = _next_line_start(stream, seg.start, stop)
            if pos is None:
                return
            prev_blank = _prev_line_blank(stream, pos) if paragraphs else True
            stream.seek(pos)
            lines = _lines(stream.blocks(), pos)
        if seg.kind == "jsonl":
            yield from _jsonl_docs(seg, lines, stop, opts.text_field, policy)
        elif paragraphs:
            yield from _paragraph_docs(seg, lines, stop, prev_blank, policy)
        else:
            yield from _line_docs(seg, lines, stop, policy)


def _whole_file(seg: Segment, data: bytes, policy: ErrorPolicy) -> Iterator[Document]:
    """text_split=file: the file verbatim (minus a BOM) is one document."""
    first = len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0
    try:
        text = data[first:].decode()
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, first + exc.start) + 1
        policy.bad("invalid_utf8", f"{seg.uri}:{line}", "invalid UTF-8 byte; the whole file is one document")
        return
    if not text.strip():
        policy.bad("blank_document", f"{seg.uri}:1", "file contains only whitespace")
        return
    yield Document(text, seg.uri, 0)


def _owned_lines(lines: Iterable[tuple[int, bytes]], stop: int) -> Iterator[tuple[int, bytes]]:
    """The non-blank lines that start before `stop` (the segment's own; later ones are the next's)."""
    for pos, raw in lines:
        if pos >= stop:
            return
        if raw and not raw.isspace():
            yield pos, raw


def _line_docs(
    seg: Segment, lines: Iterable[tuple[int, bytes]], stop: int, policy: ErrorPolicy
) -> Iterator[Document]:
    """One document per non-blank line (a trailing CR dropped)."""
    uri = seg.uri
    for pos, raw in _owned_lines(lines, stop):
        try:
            text = raw.rstrip(b"\r").decode()
        except UnicodeDecodeError as exc:
            policy.bad("invalid_utf8", _where(seg, pos), f"invalid UTF-8 byte at column {exc.start + 1}")
            continue
        yield Document(text, uri, pos)


def _paragraph_docs(
    seg: Segment, lines: Iterable[tuple[int, bytes]], stop: int, prev_blank: bool, policy: ErrorPolicy
) -> Iterator[Document]:
    """Blank-line separated blocks; a block starts at a non-blank line after a blank one (or at
    the file start). Lines continuing a block that started before this segment are skipped."""
    block: list[bytes] = []
    first = 0
    for pos, raw in lines:
        if not raw or raw.isspace():
            if block:
                yield from _paragraph(seg, first, block, policy)
                block = []
            prev_blank = True
            continue
        if block:
            block.append(raw)
        elif prev_blank:
            if pos >= stop:
                return
            block, first = [raw], pos
        prev_blank = False
    if block:
        yield from _paragraph(seg, first, block, policy)


def _paragraph(seg: Segment, first: int, block: list[bytes], policy: ErrorPolicy) -> Iterator[Document]:
    raw = b"\n".join([line.rstrip(b"\r") for line in block])
    try:
        yield Document(raw.decode(), seg.uri, first)
    except UnicodeDecodeError as exc:
        policy.bad(
            "invalid_utf8",
            _where(seg, first, raw.count(b"\n", 0, exc.start)),
            "invalid UTF-8 byte in this paragraph",
        )


def _jsonl_docs(
    seg: Segment, lines: Iterable[tuple[int, bytes]], stop: int, text_field: str, policy: ErrorPolicy
) -> Iterator[Document]:
    """One document per JSON object line, text taken from `text_field`; blank lines ignored."""
    uri = seg.uri
    for pos, raw in _owned_lines(lines, stop):
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            record = _NOT_PARSED
        try:
            if record is _NOT_PARSED:  # the stdlib decides, and words the error
                record = json.loads(raw.decode())
        except UnicodeDecodeError as exc:
            policy.bad("invalid_utf8", _where(seg, pos), f"invalid UTF-8 byte at column {exc.start + 1}")
            continue
        except json.JSONDecodeError as exc:
            policy.bad("bad_json", _where(seg, pos), f"malformed JSON ({exc.msg} at column {exc.colno})")
            continue
        text = record.get(text_field) if isinstance(record, dict) else None
        if isinstance(text, str) and text and not text.isspace():
            yield Document(text, uri, pos)
        else:
            _bad_record(seg, pos, record, text_field, policy)


def _bad_record(seg: Segment, pos: int, record: object, text_field: str, policy: ErrorPolicy) -> None:
    """Say what is wrong with a JSON line that parsed but holds no usable text (off the hot path)."""
    if not isinstance(record, dict):
        policy.bad("bad_json", _where(seg, pos), f"expected a JSON object, got {type(record).__name__}")
    elif text_field not in record:
        policy.bad(
            "missing_field",
            _where(seg, pos),
            f"no {text_field!r} field (keys: {sorted(record)[:8]}); set --text-field",
        )
    elif not isinstance(record[text_field], str):
        policy.bad(
            "non_string_field",
            _where(seg, pos),
            f"field {text_field!r} is {type(record[text_field]).__name__}, expected a string",
        )
    else:
        policy.bad("blank_document", _where(seg, pos), f"field {text_field!r} is blank")


# --- Parquet and Hugging Face datasets ----------------------------------------------------------


def _columnar_segment(seg: Segment, opts: ReadOptions, policy: ErrorPolicy) -> Iterator[Document]:
    """Rows of the text column; null and blank values are bad input named by `file:row N`."""
    column, uri = opts.text_field, seg.uri
    local_hf = seg.kind == "hf" and is_local(uri)
    source = None if local_hf else open_input(uri)
    try:
        if seg.kind == "parquet":
            batches = columnar.parquet_texts(source, seg.start, seg.stop, column, COLUMN_BATCH_ROWS)
        else:
            batches = columnar.arrow_texts(
                uri.removeprefix("file://") if local_hf else source, seg.start, seg.stop, column
            )
        for first, texts in batches:
            for row, text in enumerate(texts, first):
                if text and not text.isspace():
                    yield Document(text, uri, row)
                elif text is None:
                    policy.bad("null_field", f"{uri}:row {row}", f"column {column!r} is null")
                else:
                    policy.bad("blank_document", f"{uri}:row {row}", f"column {column!r} is blank")
    except pa.ArrowException as exc:  # undecodable pages; storage errors come through as themselves
        policy.bad(
            "corrupt_file",
            uri,
            f"cannot decode column {column!r} ({exc}); the rest of "
            f"rows [{seg.start}, {seg.stop}) of this file is skipped",
        )
    except DataError:
        raise
    except Exception as exc:
        raise storage_error(uri, exc) from None
    finally:
        if source is not None:
            source.close()


def read_unit(unit: WorkUnit, opts: ReadOptions, policy: ErrorPolicy) -> Iterator[Document]:
    """All documents of a unit, segment after segment, in file order."""
    for seg in unit.segments:
        if seg.kind in ("parquet", "hf"):
            yield from _columnar_segment(seg, opts, policy)
        else:
            yield from _text_segment(seg, opts, policy)
