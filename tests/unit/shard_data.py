"""Small prepared datasets for the data-loader tests: shards (with their checks) written by prep's
own shard writer and a manifest by `write_manifest`, in milliseconds and without a tokenizer, cut
into shards of a given size rather than prep's work units. Shards go into subdirectories, as prep's
work units do."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa

from data_prep.checks import CHUNK_BYTES, checks_path
from data_prep.manifest import (
    FORMAT,
    LIST_FORMAT,
    SHARD_TABLE_NAME,
    SPLITS,
    ShardTable,
    read_manifest,
    token_dtype,
    write_manifest,
)
from data_prep.writer import shard_bytes, write_shard
from dist_llm.bench.dataloader import write_whole_shard_manifest


def _write_shard(data_dir: str, rel: str, docs: list[np.ndarray], dtype: np.dtype) -> dict:
    """A shard laid out as prep writes it (with its checks); returns its shard table entry."""
    values = np.concatenate(docs).astype(dtype)
    written = write_shard(data_dir, rel, shard_bytes(values, np.array([len(d) for d in docs])))
    return {"path": rel, "docs": len(docs), "tokens": len(values)} | {
        k: written[k] for k in ("bytes", "sha256", "values_offset")
    }


def make_dataset(
    data_dir: str,
    split_docs: dict[str, list[np.ndarray]],
    shard_tokens: int,
    tokenizer_sha: str = "0" * 64,
    vocab_size: int = 100_000,
) -> str:
    """Write `split_docs` as Arrow shards of about `shard_tokens` tokens (a document is never split)
    plus a manifest; a split without documents has no shards. Token ids are stored as prep stores
    them for `vocab_size` (uint32 by default, so any test id up to 2**32 - 1 fits)."""
    dtype = token_dtype(vocab_size)
    tables = {}
    for split in SPLITS:
        shards, pending = [], []
        docs = split_docs.get(split, [])
        for i, doc in enumerate(docs):
            pending.append(doc)
            if sum(len(d) for d in pending) >= shard_tokens or i == len(docs) - 1:
                rel = f"units/u-{len(shards) // 2:06d}/{split}-{len(shards) % 2:03d}.arrow"
                shards.append(_write_shard(data_dir, rel, pending, dtype))
                pending = []
        tables[split] = ShardTable.from_entries(shards)
    header = {
        "format": FORMAT,
        "token_dtype": dtype.name,
        "chunk_bytes": CHUNK_BYTES,
        "tokenizer": {
            "kind": "sentencepiece",
            "path": "tokenizer.model",
            "sha256": tokenizer_sha,
            "vocab_size": vocab_size,
            "bos_id": 1,
            "eos_id": 2,
            "pad_id": None,
            "unk_id": 0,
            "mask_id": None,
        },
        "splits": {},
        "skipped": {"total": 0, "by_reason": {}},
        "args": {"test": True},
        "created_unix": 0.0,
    }
    write_manifest(data_dir, header, tables)
    return data_dir


def to_list_format(data_dir: str) -> None:
    """Rewrite a dataset as earlier versions wrote it: int32 token ids, every shard listed in the
    JSON (`dist_llm.shards/1`), no shard table, no checks."""
    manifest = read_manifest(data_dir)
    splits = {}
    for split, table in manifest.shards.items():
        shards = []
        for i in range(len(table)):
            path = os.path.join(data_dir, table.path(i))
            docs = pa.ipc.open_file(path).read_all().column("tokens").to_numpy()
            entry = _write_shard(data_dir, table.path(i), list(docs), np.dtype(np.int32))
            os.remove(os.path.join(data_dir, checks_path(table.path(i))))
            shards.append({k: v for k, v in entry.items() if k != "values_offset"})
        splits[split] = {k: manifest.header["splits"][split][k] for k in ("docs", "tokens")} | {
            "shards": shards
        }
    header = {k: v for k, v in manifest.header.items() if k not in ("shard_table", "chunk_bytes")}
    header |= {"format": LIST_FORMAT, "token_dtype": "int32", "splits": splits}
    with open(os.path.join(data_dir, "manifest.json"), "w") as f:
        json.dump(header, f, indent=1)
    os.remove(os.path.join(data_dir, SHARD_TABLE_NAME))


def to_whole_shard_format(data_dir: str) -> None:
    """Rewrite a dataset's manifest as the version before range reads wrote it
    (`dist_llm.shards/2`: no offsets, no checks), which remote readers download as whole shards."""
    manifest = read_manifest(data_dir)
    write_whole_shard_manifest(data_dir, manifest)
    for table in manifest.shards.values():
        for i in range(len(table)):
            os.remove(os.path.join(data_dir, checks_path(table.path(i))))


def counting_docs(num_docs: int, first_len: int = 7, first_token: int = 0) -> list[np.ndarray]:
    """Documents of varying length whose tokens, concatenated, are first_token, first_token+1, ..."""
    docs, next_token = [], first_token
    for i in range(num_docs):
        length = first_len + (i * 5) % 11
        docs.append(np.arange(next_token, next_token + length, dtype=np.int32))
        next_token += length
    return docs
