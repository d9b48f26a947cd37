"""Resolve what the user typed (files, directories, globs; local or s3://) into `InputFile`s.

Everything planning needs is learned here from listings and footers only: kind, compression,
size, an identity that changes when the file does (so a resume notices edited inputs), and for
Parquet/HF the rows and row-group sizes. Problems that metadata already shows (missing paths,
empty tables, a missing text column) are reported here, before any worker starts.

An unreachable store, bad credentials or a missing bucket always raise, even under
`--on-error skip`: that is a broken setup, not bad input, and skipping it would silently prepare
an empty or partial corpus.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import fsspec
import pyarrow as pa
from fsspec.core import has_magic

from data_prep import columnar
from data_prep.readers import (
    FORMATS,
    TEXT_SPLITS,
    ErrorPolicy,
    endpoint_of,
    input_fs,
    open_input,
    storage_error,
)
from data_prep.units import InputFile, ReadOptions
from dist_llm.errors import DataError
from dist_llm.uri import is_local

COMPRESSION_SUFFIXES = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
JSONL_SUFFIXES = (".jsonl", ".json")


@dataclass(frozen=True)
class _Found:
    """A listed file, or the root of a saved HF dataset (expanded to its arrow files later)."""

    path: str  # inside the filesystem
    info: dict
    dataset: bool = False


def _check_options(opts: ReadOptions) -> None:
    if opts.format not in FORMATS:
        raise DataError(f"--format {opts.format!r} is not one of {FORMATS}")
    if opts.text_split not in TEXT_SPLITS:
        raise DataError(f"--text-split {opts.text_split!r} is not one of {TEXT_SPLITS}")


def _split_compression(name: str) -> tuple[str, str | None]:
    """(lower-cased name without a compression suffix, compression or None)."""
    lower = name.lower()
    for suffix, compression in COMPRESSION_SUFFIXES.items():
        if lower.endswith(suffix):
            return lower[: -len(suffix)], compression
    return lower, None


def detect(name: str, fmt: str) -> tuple[str, str | None]:
    """(kind, compression) of a file from its name: `auto` looks at the extensions."""
    base, compression = _split_compression(name)
    if fmt != "auto":
        kind = fmt
    elif base.endswith(".parquet"):
        kind = "parquet"
    elif base.endswith(JSONL_SUFFIXES):
        kind = "jsonl"
    else:
        kind = "text"
    return kind, (compression if kind in ("text", "jsonl") else None)


def _sort_key(path: str) -> list[str]:
    """Component-wise, so `a/z` sorts before `a-b/c` as in a directory walk."""
    return path.split("/")


def _hidden(path: str, root: str) -> bool:
    return any(part.startswith(".") for part in path[len(root) :].split("/"))


def _walk(fs: fsspec.AbstractFileSystem, root: str, datasets: bool) -> list[_Found]:
    """Files under `root`, sorted, hidden entries skipped; saved HF datasets kept whole."""
    listing = {p: i for p, i in fs.find(root, detail=True).items() if not _hidden(p, root)}
    roots = columnar.saved_dataset_roots(listing) if datasets else []
    found: list[_Found] = []
    seen: set[str] = set()
    for path in sorted(listing, key=_sort_key):
        owner = next((r for r in roots if path.startswith(r + "/")), None)
        if owner is None:
            found.append(_Found(path, listing[path]))
        elif owner not in seen:
            seen.add(owner)
            found.append(_Found(owner, {}, dataset=True))
    return found


def _missing(uri: str, fs: fsspec.AbstractFileSystem, path: str, policy: ErrorPolicy) -> None:
    """A path that does not exist is bad input, unless its whole bucket is missing (a setup error)."""
    if uri.startswith(("s3://", "s3a://")):
        bucket = path.split("/", 1)[0]
        if not fs.exists(bucket):
            raise DataError(
                f"{uri}: bucket {bucket!r} does not exist at {endpoint_of(uri)}; check the "
                "bucket name and that AWS_ENDPOINT_URL points at the right store"
            )
    policy.bad("missing_path", uri, "input path does not exist")


def _expand(
    uri: str, opts: ReadOptions, policy: ErrorPolicy
) -> tuple[fsspec.AbstractFileSystem, list[_Found]]:
    fs, path = input_fs(uri)
    datasets = opts.format in ("auto", "hf")
    try:
        if has_magic(path):
            static = path[: min(path.find(c) for c in "*?[" if c in path)].rpartition("/")[0]
            matches = {p: i for p, i in fs.glob(path, detail=True).items() if not _hidden(p, static)}
        else:
            matches = {path: fs.info(path)}
    except FileNotFoundError:
        matches = {}
    except Exception as exc:  # botocore's errors are not OSError
        raise storage_error(uri, exc) from None
    found: list[_Found] = []
    try:
        if not matches:
            _missing(uri, fs, path, policy)
        for match in sorted(matches, key=_sort_key):
            kind = matches[match]["type"]
            if kind == "directory":
                found += _walk(fs, match.rstrip("/"), datasets)
            elif kind == "file":
                found.append(_Found(match, matches[match]))
            else:
                raise DataError(
                    f"{match}: not a regular file ({kind}, a pipe?); prep splits files by size "
                    "and may read them twice, so write the data to a file first"
                )
    except DataError:
        raise
    except Exception as exc:  # botocore's errors are not OSError
        raise storage_error(uri, exc) from None
    return fs, found


def _uri(fs: fsspec.AbstractFileSystem, path: str, given: str) -> str:
    """Local files keep plain paths; remote ones get their protocol back."""
    return path if is_local(given) else fs.unstrip_protocol(path)


def _identity(uri: str, info: dict) -> str:
    """Changes when the file changes: size + mtime (ns) locally, size + ETag on object stores."""
    if is_local(uri):
        stat = os.stat(uri.removeprefix("file://"))
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    tag = str(info.get("ETag") or info.get("LastModified") or info.get("mtime") or "").strip('"')
    return f"{info['size']}:{tag}"


def _parquet_file(
    uri: str, size: int, identity: str, opts: ReadOptions, policy: ErrorPolicy
) -> InputFile | None:
    if size == 0:
        policy.bad("empty_file", uri, "file is empty")
        return None
    with open_input(uri) as source:
        try:
            layout = columnar.parquet_layout(source, opts.text_field)
        except pa.ArrowInvalid as exc:  # storage errors pass through: they are not bad input
            policy.bad("corrupt_file", uri, f"not a readable Parquet file ({exc})")
            return None
    problem = columnar.text_column_problem(layout.schema, opts.text_field)
    if problem:
        policy.bad("bad_schema", uri, problem)
    elif layout.rows == 0:
        policy.bad("empty_file", uri, "Parquet file has no rows")
    else:
        return InputFile(uri, "parquet", None, size, identity, layout.rows, layout.group_bytes)
    return None


def _hf_file(
    fs: fsspec.AbstractFileSystem, path: str, uri: str, opts: ReadOptions, policy: ErrorPolicy
) -> InputFile | None:
    """One arrow stream file of a HF dataset. Rows are counted only for local files (memory-
    mapped batch headers); a remote file would have to be downloaded to count, so it stays whole."""
    info = fs.info(path)
    local = is_local(uri)
    try:
        if local:
            schema = columnar.arrow_schema(path)
        else:
            with open_input(uri) as handle:
                schema = columnar.arrow_schema(handle)
        problem = columnar.text_column_problem(schema, opts.text_field)
        rows = columnar.arrow_rows(path) if local and not problem else 0
    except pa.ArrowInvalid as exc:
        policy.bad("corrupt_file", uri, f"not a readable Arrow stream file ({exc})")
        return None
    if problem:
        policy.bad("bad_schema", uri, problem)
    elif local and rows == 0:
        policy.bad("empty_file", uri, "arrow file has no rows")
    else:
        return InputFile(uri, "hf", None, info["size"], _identity(uri, info), rows)
    return None


def _loaded_files(uris: list[str], opts: ReadOptions, policy: ErrorPolicy) -> list[InputFile]:
    """--format hf with plain files: `load_dataset` builds them (one call per run of files with
    the same builder, which keeps their order), then its arrow cache files are read."""
    groups: list[tuple[str, list[str]]] = []
    for uri in uris:
        builder = columnar.builder_for(_split_compression(uri)[0])
        if groups and groups[-1][0] == builder:
            groups[-1][1].append(uri)
        else:
            groups.append((builder, [uri]))
    files: list[InputFile] = []
    for builder, group in groups:
        try:
            cached = columnar.load_with_datasets(group, builder, opts.hf_split, opts.hf_cache_dir)
        except Exception as exc:  # datasets raises many unrelated types for unreadable files
            policy.bad(
                "load_failed",
                group[0],
                f"datasets.load_dataset({builder!r}) failed on {len(group)} file(s): {exc}",
            )
            continue
        for path in cached:
            fs, local_path = input_fs(path)
            files += [f for f in [_hf_file(fs, local_path, path, opts, policy)] if f]
    return files


def _resolve(
    fs: fsspec.AbstractFileSystem, entry: _Found, given: str, opts: ReadOptions, policy: ErrorPolicy
) -> list[InputFile]:
    """The input files of one listed entry (a saved HF dataset gives several)."""
    uri = _uri(fs, entry.path, given)
    try:
        if entry.dataset:
            paths = columnar.saved_dataset_files(fs, entry.path, opts.hf_split)
            return [f for p in paths if (f := _hf_file(fs, p, _uri(fs, p, given), opts, policy))]
        kind, compression = detect(entry.path, opts.format)
        identity = _identity(uri, entry.info)
        if kind == "parquet":
            parquet = _parquet_file(uri, entry.info["size"], identity, opts, policy)
            return [parquet] if parquet else []
        return [InputFile(uri, kind, compression, entry.info["size"], identity)]
    except DataError:
        raise
    except Exception as exc:  # botocore's errors are not OSError
        raise storage_error(uri, exc) from None


def resolve_inputs(paths: list[str], opts: ReadOptions, policy: ErrorPolicy) -> list[InputFile]:
    """Input files in order: each argument in turn, directories walked recursively and sorted,
    hidden entries skipped, globs expanded, saved HF datasets expanded to their arrow files."""
    _check_options(opts)
    files: list[InputFile] = []
    for given in paths:
        fs, found = _expand(given, opts, policy)
        plain: list[str] = []  # --format hf: files for load_dataset, flushed in order
        for entry in found:
            if opts.format == "hf" and not entry.dataset:
                plain.append(_uri(fs, entry.path, given))
                continue
            files += _loaded_files(plain, opts, policy)
            plain = []
            files += _resolve(fs, entry, given, opts, policy)
        files += _loaded_files(plain, opts, policy)
    return files
