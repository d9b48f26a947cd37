"""Small prepared datasets for the data-loader tests, written straight in the manifest format
(`dist_llm.shards/1`): milliseconds, no tokenizer training, independent of how `dist-llm prep`
lays out its shards. Shards go into subdirectories, as prep's work units do."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pyarrow as pa

SCHEMA = pa.schema([pa.field("tokens", pa.list_(pa.int32()))])


def _write_shard(path: str, docs: list[np.ndarray]) -> dict:
    offsets = np.zeros(len(docs) + 1, dtype=np.int32)
    np.cumsum([len(d) for d in docs], out=offsets[1:])
    column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(docs), type=pa.int32()))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as ipc:
        ipc.write_batch(pa.record_batch([column], schema=SCHEMA))
    data = open(path, "rb").read()
    return {
        "docs": len(docs),
        "tokens": int(offsets[-1]),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def make_dataset(
    data_dir: str, split_docs: dict[str, list[np.ndarray]], shard_tokens: int, tokenizer_sha: str = "0" * 64
) -> str:
    """Write `split_docs` as Arrow shards of about `shard_tokens` tokens (a document is never split)
    plus a manifest; a split without documents has no shards."""
    splits = {}
    for split in ("train", "validation"):
        shards, pending = [], []
        docs = [np.asarray(d, dtype=np.int32) for d in split_docs.get(split, [])]
        for i, doc in enumerate(docs):
            pending.append(doc)
            if sum(len(d) for d in pending) >= shard_tokens or i == len(docs) - 1:
                rel = f"units/u-{len(shards) // 2:06d}/{split}-{len(shards) % 2:03d}.arrow"
                shards.append({"path": rel, **_write_shard(os.path.join(data_dir, rel), pending)})
                pending = []
        splits[split] = {
            "docs": sum(s["docs"] for s in shards),
            "tokens": sum(s["tokens"] for s in shards),
            "shards": shards,
        }
    manifest = {
        "format": "dist_llm.shards/1",
        "token_dtype": "int32",
        "tokenizer": {
            "kind": "sentencepiece",
            "path": "tokenizer.model",
            "sha256": tokenizer_sha,
            "vocab_size": 100_000,
            "bos_id": 1,
            "eos_id": 2,
            "pad_id": None,
            "unk_id": 0,
            "mask_id": None,
        },
        "splits": splits,
        "skipped": {"total": 0, "by_reason": {}},
        "args": {"test": True},
        "created_unix": 0.0,
    }
    with open(os.path.join(data_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return data_dir


def counting_docs(num_docs: int, first_len: int = 7, first_token: int = 0) -> list[np.ndarray]:
    """Documents of varying length whose tokens, concatenated, are first_token, first_token+1, ..."""
    docs, next_token = [], first_token
    for i in range(num_docs):
        length = first_len + (i * 5) % 11
        docs.append(np.arange(next_token, next_token + length, dtype=np.int32))
        next_token += length
    return docs
