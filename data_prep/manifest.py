"""The dataset manifest: the contract between data prep and the training data loader.

Two files. `manifest-shards.arrow`, the shard table, holds one row per shard (path, docs, tokens,
bytes, sha256, values_offset): the train split's rows as one Arrow record batch, the validation
split's as a second. A rank maps it and reads its columns as arrays, so a million shards cost a
few arrays and no parsing, where a JSON list would cost a million Python objects per rank.
`manifest.json`, the header, is small: format, token dtype, chunk size, tokenizer, per-split totals
and fingerprints, and the table's name, size and sha256, which the loader checks. The table is
written first and the header last, atomically, and prep deletes the header when it starts, so a
header's presence means "the table it names and every shard listed there are complete". All paths
are relative to the data directory. Token ids other than `eos_id` may be null for foreign (HF)
tokenizers that lack that token.

Shards hold uint16 token ids when the vocabulary has at most 65,536 entries (half the bytes of
uint32 on disk, in the page cache and on the network), else uint32. `values_offset` (where a
shard's token ids start in its file) and the header's `chunk_bytes` let a remote reader fetch and
verify only the byte ranges it needs, against the checks file next to each shard (see
`data_prep.checks`). Datasets of earlier formats still load, read as whole shards: those written
before range reads (`dist_llm.shards/2`: no offsets, no checks) and before the table existed
(`dist_llm.shards/1`: every shard listed inside the JSON, int32 ids), whose list becomes the same
columns.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import pyarrow as pa

from data_prep import store
from data_prep.checks import CHUNK_BYTES
from dist_llm.data.cache import DataCache, cached_name
from dist_llm.errors import DataError
from dist_llm.uri import filesystem, is_local, join

if TYPE_CHECKING:  # the training loader imports this module; keep sentencepiece out of it
    from data_prep.tokenizer import Tokenizer

MANIFEST_NAME = "manifest.json"
SHARD_TABLE_NAME = "manifest-shards.arrow"
FORMAT = "dist_llm.shards/3"
WHOLE_SHARD_FORMAT = "dist_llm.shards/2"
"""The earlier format with a shard table but no range-read layout: remote shards download whole."""
LIST_FORMAT = "dist_llm.shards/1"
"""The earliest format: the shard list inside the JSON."""
TOKEN_DTYPES = {
    FORMAT: ("uint16", "uint32"),
    WHOLE_SHARD_FORMAT: ("uint16", "uint32"),
    LIST_FORMAT: ("int32",),
}
SPLITS = ("train", "validation")
_WHOLE_SHARD_FIELDS = [
    pa.field("path", pa.string()),
    pa.field("docs", pa.int64()),
    pa.field("tokens", pa.int64()),
    pa.field("bytes", pa.int64()),
    pa.field("sha256", pa.binary(32)),
]
SHARD_SCHEMA = pa.schema([*_WHOLE_SHARD_FIELDS, pa.field("values_offset", pa.int64())])
TABLE_SCHEMAS = {FORMAT: SHARD_SCHEMA, WHOLE_SHARD_FORMAT: pa.schema(_WHOLE_SHARD_FIELDS)}

_TOP_KEYS = ("format", "token_dtype", "tokenizer", "splits", "skipped", "args", "created_unix")
_TOKENIZER_KEYS = ("kind", "path", "sha256", "vocab_size", "bos_id", "eos_id", "pad_id", "unk_id", "mask_id")
_TOTAL_KEYS = ("docs", "tokens", "num_shards")
_SPLIT_KEYS = (*_TOTAL_KEYS, "fingerprint")
_TABLE_KEYS = ("path", "bytes", "sha256")
_LIST_SPLIT_KEYS = ("docs", "tokens", "shards")
_LIST_SHARD_KEYS = ("path", "docs", "tokens", "bytes", "sha256")


def _int64_view(column: pa.Int64Array) -> np.ndarray:
    # Not `to_numpy()`: it imports pandas, about half a second of every rank's start.
    return np.frombuffer(column.buffers()[1], np.int64, len(column), column.offset * 8)


@dataclass(frozen=True, eq=False)
class ShardTable:
    """One split's shards as columns. Counts are numpy arrays; a path or checksum becomes a Python
    string only when that shard is opened."""

    paths: pa.StringArray
    checksums: pa.FixedSizeBinaryArray
    """sha256 of each shard file, 32 raw bytes each."""
    docs: np.ndarray
    tokens: np.ndarray
    bytes: np.ndarray
    values_offsets: np.ndarray | None
    """Where each shard's token ids start in its file (bytes); None in datasets of earlier formats,
    which are read as whole shards."""

    def __len__(self) -> int:
        return len(self.tokens)

    def path(self, index: int) -> str:
        return self.paths[index].as_py()

    def sha256(self, index: int) -> str:
        return self.checksums[index].as_py().hex()

    @classmethod
    def from_batch(cls, batch: pa.RecordBatch) -> ShardTable:
        """Columns of `batch` without copying them (views of the mapped table)."""
        ranged = "values_offset" in batch.schema.names
        return cls(
            paths=batch.column("path"),
            checksums=batch.column("sha256"),
            docs=_int64_view(batch.column("docs")),
            tokens=_int64_view(batch.column("tokens")),
            bytes=_int64_view(batch.column("bytes")),
            values_offsets=_int64_view(batch.column("values_offset")) if ranged else None,
        )

    @classmethod
    def from_entries(cls, entries: list[dict]) -> ShardTable:
        """From per-shard dicts with the table's columns as keys (what prep's unit records hold);
        entries without `values_offset` (earlier formats) give a table without offsets."""
        schema = (
            SHARD_SCHEMA if all("values_offset" in e for e in entries) else TABLE_SCHEMAS[WHOLE_SHARD_FORMAT]
        )

        def values(name: str) -> list:
            return [bytes.fromhex(e[name]) if name == "sha256" else e[name] for e in entries]

        return cls.from_batch(
            pa.record_batch([pa.array(values(f.name), f.type) for f in schema], schema=schema)
        )

    def to_batch(self) -> pa.RecordBatch:
        """The table as written by this version (with offsets)."""
        assert self.values_offsets is not None, "a table without offsets is only ever read"
        counts = [pa.array(c, pa.int64()) for c in (self.docs, self.tokens, self.bytes)]
        offsets = pa.array(self.values_offsets, pa.int64())
        return pa.record_batch([self.paths, *counts, self.checksums, offsets], schema=SHARD_SCHEMA)


@dataclass(frozen=True, eq=False)
class Manifest:
    """A read (or just written) manifest: the JSON header and each split's shard table."""

    header: dict
    shards: dict[str, ShardTable]

    @property
    def tokenizer(self) -> dict:
        return self.header["tokenizer"]

    @property
    def token_type(self) -> pa.DataType:
        """The Arrow type of the token ids in every shard."""
        return pa.from_numpy_dtype(np.dtype(self.header["token_dtype"]))


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned type holding every id of a `vocab_size`-entry vocabulary."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def shard_schema(token_type: pa.DataType) -> pa.Schema:
    """A shard's one column: a list of token ids per document."""
    return pa.schema([pa.field("tokens", pa.list_(token_type))])


def manifest_path(data_dir: str) -> str:
    return join(data_dir, MANIFEST_NAME)


def remove_manifest(data_dir: str) -> None:
    """First step of every run: from here on the directory is "incomplete" until rewritten."""
    store.remove(manifest_path(data_dir))


def manifest_header(tokenizer: Tokenizer, tokenizer_rel_path: str, skipped: dict, args: dict) -> dict:
    """The header's descriptive part in the documented key order (`write_manifest` adds the rest)."""
    return {
        "format": FORMAT,
        "token_dtype": token_dtype(tokenizer.vocab_size).name,
        "chunk_bytes": CHUNK_BYTES,
        "tokenizer": {
            "kind": tokenizer.kind,
            "path": tokenizer_rel_path,
            "sha256": tokenizer.sha256,
            "vocab_size": tokenizer.vocab_size,
            **tokenizer.special_ids(),
        },
        "splits": {},
        "skipped": skipped,
        "args": args,
        "created_unix": time.time(),
    }


def _fingerprint(tokenizer_sha256: str, table: ShardTable) -> str:
    """Identifies a split's exact data (shard checksums + tokenizer), so a resume can refuse other
    data; a local dataset and its copy in object storage share it. Computed once, when the manifest
    is written, not by every rank at every start. The hex checksums are hashed as one string, which
    equals hashing them one by one: a checkpoint taken on a dataset of the earlier format, whose
    fingerprint is computed here on load, still resumes."""
    digest = hashlib.sha256(tokenizer_sha256.encode())
    if len(table):
        checksums = table.checksums
        raw = memoryview(checksums.buffers()[1])[checksums.offset * 32 : (checksums.offset + len(table)) * 32]
        digest.update(raw.hex().encode())
    return digest.hexdigest()[:16]


def _totals(table: ShardTable) -> dict:
    return {"docs": int(table.docs.sum()), "tokens": int(table.tokens.sum()), "num_shards": len(table)}


def _split_block(table: ShardTable, tokenizer_sha256: str) -> dict:
    return _totals(table) | {"fingerprint": _fingerprint(tokenizer_sha256, table)}


def write_manifest(data_dir: str, header: dict, shards: dict[str, ShardTable]) -> Manifest:
    """Write the shard table, then `manifest.json` naming it (each atomically: tmp + rename, or one
    PUT). The header's split totals and table entry are computed here from `shards`, so they always
    agree with the table. Returns the manifest as written."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, SHARD_SCHEMA) as ipc:
        for split in SPLITS:
            ipc.write_batch(shards[split].to_batch())
    table = sink.getvalue().to_pybytes()
    store.write_bytes(join(data_dir, SHARD_TABLE_NAME), table)
    header = header | {
        "splits": {split: _split_block(shards[split], header["tokenizer"]["sha256"]) for split in SPLITS},
        "shard_table": {
            "path": SHARD_TABLE_NAME,
            "bytes": len(table),
            "sha256": hashlib.sha256(table).hexdigest(),
        },
    }
    store.write_bytes(manifest_path(data_dir), (json.dumps(header, indent=2) + "\n").encode())
    return Manifest(header, {split: shards[split] for split in SPLITS})


def _require(mapping: object, keys: tuple[str, ...], where: str, path: str) -> None:
    if not isinstance(mapping, dict):
        raise DataError(f"{path}: {where or 'top level'} must be a JSON object; re-run `dist-llm prep`")
    for key in keys:
        if key not in mapping:
            dotted = f"{where}.{key}" if where else key
            raise DataError(
                f"{path}: missing key {dotted!r}; the prep run was incomplete or older than "
                "this format, re-run `dist-llm prep`"
            )


def _unreadable(path: str, error: Exception) -> DataError:
    return DataError(
        f"{path}: cannot read ({type(error).__name__}: {error}); check data.path, and for object "
        "storage the endpoint (AWS_ENDPOINT_URL) and credentials"
    )


def read_header(data_dir: str) -> dict:
    """Load and validate `<data_dir>/manifest.json` (a local path or URI) without its shard table:
    enough for the tokenizer. Raises DataError naming the file and key."""
    path = manifest_path(data_dir)
    try:
        fs, fs_path = filesystem(path)
        with fs.open(fs_path, "r", encoding="utf-8") as fh:
            header = json.load(fh)
    except FileNotFoundError as exc:
        raise DataError(
            f"{path}: not found; run `dist-llm prep --out {data_dir}` first "
            "(a prep that did not finish leaves no manifest)"
        ) from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}); re-run `dist-llm prep`") from exc
    except Exception as exc:  # botocore, aiohttp and OSError subclasses all mean "cannot reach it"
        raise _unreadable(path, exc) from None
    _require(header, _TOP_KEYS, "", path)
    if header["format"] not in TOKEN_DTYPES:
        raise DataError(
            f"{path}: key 'format' is {header['format']!r}, expected {FORMAT!r}; re-run `dist-llm prep`"
        )
    if header["token_dtype"] not in TOKEN_DTYPES[header["format"]]:
        raise DataError(
            f"{path}: key 'token_dtype' is {header['token_dtype']!r}, expected one of "
            f"{TOKEN_DTYPES[header['format']]}; re-run `dist-llm prep`"
        )
    _require(header["tokenizer"], _TOKENIZER_KEYS, "tokenizer", path)
    if not isinstance(header["tokenizer"]["eos_id"], int):
        raise DataError(f"{path}: key 'tokenizer.eos_id' must be an integer")
    _require(header["splits"], SPLITS, "splits", path)
    split_keys = _LIST_SPLIT_KEYS if header["format"] == LIST_FORMAT else _SPLIT_KEYS
    for split in SPLITS:
        _require(header["splits"][split], split_keys, f"splits.{split}", path)
    if header["format"] != LIST_FORMAT:
        _require(header.get("shard_table"), _TABLE_KEYS, "shard_table", path)
    if header["format"] == FORMAT:
        _require(header, ("chunk_bytes",), "", path)
    _require(header["skipped"], ("total", "by_reason"), "skipped", path)
    return header


def _from_list(header: dict, path: str) -> Manifest:
    """A `dist_llm.shards/1` manifest as columns, its header shaped like a current one."""
    shards = {}
    for split in SPLITS:
        for index, shard in enumerate(header["splits"][split]["shards"]):
            _require(shard, _LIST_SHARD_KEYS, f"splits.{split}.shards[{index}]", path)
        shards[split] = ShardTable.from_entries(header["splits"][split]["shards"])
    tokenizer_sha256 = header["tokenizer"]["sha256"]
    splits = {
        split: {**header["splits"][split], **_split_block(shards[split], tokenizer_sha256)}
        for split in SPLITS
    }
    for block in splits.values():
        del block["shards"]
    return Manifest(header | {"splits": splits}, shards)


def _file_sha256(fh: BinaryIO) -> str:
    """sha256 of an open file, read in blocks (through the page cache, not a mapping)."""
    digest, block = hashlib.sha256(), bytearray(1 << 20)
    while n := fh.readinto(block):
        digest.update(memoryview(block)[:n])
    return digest.hexdigest()


def _map_table(data_dir: str, entry: dict, cache: DataCache | None) -> pa.Buffer:
    """The shard table's bytes, mapped: in place when local, else from a verified copy in the
    node's data cache (downloaded once per node, like a shard). The checksum is computed from
    reads of the file, not through the mapping, so the table's pages stay out of this process's
    resident memory until a column is used (at 1M shards the table is 100 MB, mostly paths and
    checksums, of which a rank reads the entries of the shards it opens)."""
    uri = join(data_dir, entry["path"])
    try:
        if is_local(data_dir):
            fh = open(uri.removeprefix("file://"), "rb")
        else:
            cache = cache or DataCache()
            local = cached_name(cache.dataset_dir(data_dir), entry["path"], entry["sha256"])
            fh = cache.open_file(uri, local, entry["sha256"], entry["bytes"])
    except FileNotFoundError:
        raise DataError(
            f"{uri}: the shard table named by {MANIFEST_NAME} is missing; re-run `dist-llm prep`"
        ) from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size != entry["bytes"] or _file_sha256(fh) != entry["sha256"]:
            raise DataError(
                f"{uri}: does not match the size and sha256 {MANIFEST_NAME} records for it; the "
                "dataset was modified or copied incompletely, re-run `dist-llm prep` or copy it again"
            )
        # The open file itself, so a copy renamed over the path meanwhile cannot be what is mapped.
        return pa.py_buffer(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))


def read_manifest(data_dir: str, cache: DataCache | None = None) -> Manifest:
    """The header and shard tables of the dataset at `data_dir` (a local path or URI); a remote
    table is kept in `cache` (by default the default cache directory, unbounded). Raises DataError
    naming the file."""
    header = read_header(data_dir)
    path = manifest_path(data_dir)
    if header["format"] == LIST_FORMAT:
        return _from_list(header, path)
    entry = header["shard_table"]
    try:
        data = _map_table(data_dir, entry, cache)
    except DataError:
        raise
    except Exception as exc:
        raise _unreadable(join(data_dir, entry["path"]), exc) from None
    reader = pa.ipc.open_file(data)
    if not reader.schema.equals(TABLE_SCHEMAS[header["format"]]) or reader.num_record_batches != len(SPLITS):
        raise DataError(
            f"{join(data_dir, entry['path'])}: not a shard table of format {header['format']}; "
            "re-run `dist-llm prep`"
        )
    shards = {split: ShardTable.from_batch(reader.get_batch(i)) for i, split in enumerate(SPLITS)}
    for split in SPLITS:
        if _totals(shards[split]) != {k: header["splits"][split][k] for k in _TOTAL_KEYS}:
            raise DataError(
                f"{path}: the totals of split {split!r} disagree with its shard table; re-run `dist-llm prep`"
            )
    return Manifest(header, shards)
