"""`manifest.json`: the contract between data prep and the training data loader.

The manifest is written last and atomically, and deleted at the start of every prep run, so
its presence means "every shard it lists is complete and matches its sha256". All paths in it
are relative to the data directory. Token ids other than `eos_id` may be null for foreign
(HF) tokenizers that lack that token.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from data_prep import store
from dist_llm.errors import DataError
from dist_llm.uri import filesystem, join

if TYPE_CHECKING:  # the training loader imports this module; keep sentencepiece out of it
    from data_prep.tokenizer import Tokenizer

MANIFEST_NAME = "manifest.json"
FORMAT = "dist_llm.shards/1"
TOKEN_DTYPE = "int32"

_TOP_KEYS = ("format", "token_dtype", "tokenizer", "splits", "skipped", "args", "created_unix")
_TOKENIZER_KEYS = ("kind", "path", "sha256", "vocab_size", "bos_id", "eos_id", "pad_id", "unk_id", "mask_id")
_SPLIT_KEYS = ("docs", "tokens", "shards")
_SHARD_KEYS = ("path", "docs", "tokens", "bytes", "sha256")


def manifest_path(data_dir: str) -> str:
    return join(data_dir, MANIFEST_NAME)


def remove_manifest(data_dir: str) -> None:
    """First step of every run: from here on the directory is "incomplete" until rewritten."""
    store.remove(manifest_path(data_dir))


def build_manifest(
    tokenizer: Tokenizer, tokenizer_rel_path: str, splits: dict, skipped: dict, args: dict
) -> dict:
    """Assemble the manifest dict in the documented key order."""
    return {
        "format": FORMAT,
        "token_dtype": TOKEN_DTYPE,
        "tokenizer": {
            "kind": tokenizer.kind,
            "path": tokenizer_rel_path,
            "sha256": tokenizer.sha256,
            "vocab_size": tokenizer.vocab_size,
            **tokenizer.special_ids(),
        },
        "splits": splits,
        "skipped": skipped,
        "args": args,
        "created_unix": time.time(),
    }


def write_manifest(data_dir: str, manifest: dict) -> str:
    """Atomically write `manifest.json` (tmp + os.replace, or one PUT); returns its path."""
    path = manifest_path(data_dir)
    store.write_bytes(path, (json.dumps(manifest, indent=2) + "\n").encode())
    return path


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


def read_manifest(data_dir: str) -> dict:
    """Load and validate `<data_dir>/manifest.json` (a local path or URI); raises DataError naming
    file and key."""
    path = manifest_path(data_dir)
    try:
        fs, fs_path = filesystem(path)
        with fs.open(fs_path, "r", encoding="utf-8") as fh:
            manifest = json.load(fh)
    except FileNotFoundError as exc:
        raise DataError(
            f"{path}: not found; run `dist-llm prep --out {data_dir}` first "
            "(a prep that did not finish leaves no manifest)"
        ) from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}); re-run `dist-llm prep`") from exc
    _require(manifest, _TOP_KEYS, "", path)
    if manifest["format"] != FORMAT:
        raise DataError(
            f"{path}: key 'format' is {manifest['format']!r}, expected {FORMAT!r}; re-run `dist-llm prep`"
        )
    if manifest["token_dtype"] != TOKEN_DTYPE:
        raise DataError(f"{path}: key 'token_dtype' is {manifest['token_dtype']!r}, expected {TOKEN_DTYPE!r}")
    _require(manifest["tokenizer"], _TOKENIZER_KEYS, "tokenizer", path)
    if not isinstance(manifest["tokenizer"]["eos_id"], int):
        raise DataError(f"{path}: key 'tokenizer.eos_id' must be an integer")
    _require(manifest["splits"], ("train", "validation"), "splits", path)
    for split, block in manifest["splits"].items():
        _require(block, _SPLIT_KEYS, f"splits.{split}", path)
        for index, shard in enumerate(block["shards"]):
            _require(shard, _SHARD_KEYS, f"splits.{split}.shards[{index}]", path)
    _require(manifest["skipped"], ("total", "by_reason"), "skipped", path)
    return manifest
