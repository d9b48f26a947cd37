"""Consolidated weights out of any checkpoint, as safetensors (fp32 or bf16), sharded the way
transformers shards them.

Any engine's sharded checkpoint is read tensor by tensor and written shard by shard, so peak memory
is one output shard (`--max-shard-gb`) plus one tensor, whatever the model's size; the same writer
serves HF-transformers directories (`--format hf`, see `dist_llm.interop`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import torch
from safetensors.torch import save_file

from dist_llm.checkpoint.discovery import resolve_checkpoint
from dist_llm.checkpoint.offline import open_model_tensors, tensor_info
from dist_llm.checkpoint.state import load_trainer_state

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # transformers' default max_shard_size


def write_safetensors(
    tensors: Mapping[str, torch.Tensor],
    out_dir: str,
    dtype: torch.dtype,
    metadata: dict[str, str],
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> str:
    """Write `tensors` (read one at a time from a possibly lazy mapping) as `model.safetensors`, or
    as `model-0000i-of-0000n.safetensors` shards plus `model.safetensors.index.json` when they
    exceed `max_shard_bytes`; returns the file to load (the single file or the index)."""
    shards: list[list[str]] = [[]]
    size, total = 0, 0
    for name in tensors:
        shape, _ = tensor_info(tensors, name)
        nbytes = torch.Size(shape).numel() * dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
        total += nbytes
    os.makedirs(out_dir, exist_ok=True)
    files = (
        [SINGLE_FILE]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    for names, file in zip(shards, files):
        # A copy per tensor: one name's tensor may alias another's (a head sharing the embedding).
        data = {name: tensors[name].to(dtype=dtype, copy=True).contiguous() for name in names}
        # "format": "pt" is what transformers checks before trusting a safetensors file's layout.
        save_file(data, os.path.join(out_dir, file), metadata={"format": "pt", **metadata})
        del data
    if len(files) == 1:
        return os.path.join(out_dir, SINGLE_FILE)
    weight_map = {name: file for names, file in zip(shards, files) for name in names}
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    with open(os.path.join(out_dir, INDEX_FILE), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)
    return os.path.join(out_dir, INDEX_FILE)


def export_safetensors(
    checkpoint: str, out_dir: str, dtype: str = "fp32", max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
) -> str:
    """Write our weights + `config.json` (our full config) into out_dir; returns the weights file
    (`model.safetensors`, or the index of its shards)."""
    uri = resolve_checkpoint(checkpoint)
    trainer_state = load_trainer_state(uri)
    tied = trainer_state["config"]["model"]["tie_embeddings"]
    # A tied head is stored once, as the embedding (safetensors refuses aliases; loaders re-tie it).
    metadata = {"step": str(trainer_state["step"]), "tie_embeddings": str(tied), "source": uri}
    path = write_safetensors(open_model_tensors(uri), out_dir, DTYPES[dtype], metadata, max_shard_bytes)
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(trainer_state["config"], f, indent=1)
    return path
