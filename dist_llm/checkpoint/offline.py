"""A checkpoint's model weights outside training (eval, generate, export, `model.init_from`, a
distillation teacher), one tensor at a time under the unsharded model's names.

Peak memory is about the largest tensor: each tensor is assembled from its saved chunks (read by
byte range and verified), handed out, and dropped before the next; the optimizer state is never
read. DeepSpeed checkpoints go through DeepSpeed's own converter (memory-mapped partition files).
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Iterator
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import MetadataIndex, TensorStorageMetadata

from dist_llm.checkpoint import layout
from dist_llm.checkpoint.commit import read_manifest, read_verified
from dist_llm.checkpoint.dcp_storage import RangeReader, item_tensor
from dist_llm.checkpoint.deepspeed_files import TAG
from dist_llm.checkpoint.storage import join, read_range
from dist_llm.errors import CheckpointError

MODEL_PREFIX = "model."


def model_tensors(step_uri: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full fp32/bf16 tensor) for every model weight in the checkpoint; a tied head is not
    repeated (it is the embedding)."""
    manifest = read_manifest(step_uri)
    if layout.STATE_METADATA in manifest["files"]:
        yield from _dcp_tensors(step_uri, manifest)
    elif any(name.startswith(layout.DEEPSPEED) for name in manifest["files"]):
        yield from _deepspeed_tensors(step_uri, manifest)
    else:
        raise CheckpointError(f"{step_uri} holds neither {layout.STATE_METADATA} nor deepspeed/ files")


def load_model_state(step_uri: str, tie_embeddings: bool) -> dict[str, torch.Tensor]:
    """Every weight at once, for a model that is about to be instantiated whole anyway (with a tied
    head under its own name too, as `load_state_dict` expects)."""
    state = dict(model_tensors(step_uri))
    if tie_embeddings and "tok_embeddings.weight" in state:
        state.setdefault("output.weight", state["tok_embeddings.weight"])
    return state


def _dcp_tensors(step_uri: str, manifest: dict[str, Any]) -> Iterator[tuple[str, torch.Tensor]]:
    raw = read_verified(step_uri, manifest, layout.STATE_METADATA)
    metadata = pickle.loads(raw)
    reader = RangeReader(
        raw, lambda name, offset, length: read_range(join(step_uri, name), offset, length), step_uri
    )
    reader.set_up_storage_reader(metadata, is_coordinator=True)
    for key, entry in metadata.state_dict_metadata.items():
        if not key.startswith(MODEL_PREFIX) or not isinstance(entry, TensorStorageMetadata):
            continue
        full = torch.empty(entry.size, dtype=entry.properties.dtype)
        for chunk in entry.chunks:
            item, data = reader.read_item(MetadataIndex(key, chunk.offsets))
            target = full
            for dim, (start, length) in enumerate(zip(chunk.offsets, chunk.sizes)):
                target = target.narrow(dim, start, length)
            target.copy_(item_tensor(data, item))
        yield key[len(MODEL_PREFIX) :], full


def _deepspeed_tensors(step_uri: str, manifest: dict[str, Any]) -> Iterator[tuple[str, torch.Tensor]]:
    """Through DeepSpeed's fp32 converter over a local copy of the partition files (disk, not memory:
    the converter memory-maps them and gathers one tensor at a time)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    names = [n for n in manifest["files"] if n.startswith(layout.DEEPSPEED)]
    with tempfile.TemporaryDirectory(prefix="dist_llm_ds_read_") as tmp:
        for name in names:
            path = os.path.join(tmp, TAG, name[len(layout.DEEPSPEED) :])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(read_verified(step_uri, manifest, name))
        if not any("optim_states" in n for n in names):  # ZeRO-0: the module is saved whole
            module = torch.load(
                os.path.join(tmp, TAG, "mp_rank_00_model_states.pt"),
                map_location="cpu",
                weights_only=False,
                mmap=True,
            )["module"]
            yield from (
                (k, v.float()) for k, v in module.items() if k != "output.weight" or not _tied(module)
            )
            return
        state = get_fp32_state_dict_from_zero_checkpoint(tmp, tag=TAG, lazy_mode=True)
        seen: set[int] = set()
        for key, value in state.items():
            if id(value) in seen:  # a tied head: the same tensor as the embedding
                continue
            seen.add(id(value))
            yield key, value.contiguous() if hasattr(value, "contiguous") else value


def _tied(module: dict[str, torch.Tensor]) -> bool:
    """torch.save keeps a tied head and embedding as one storage."""
    head, embedding = module.get("output.weight"), module.get("tok_embeddings.weight")
    return head is not None and embedding is not None and head.data_ptr() == embedding.data_ptr()
