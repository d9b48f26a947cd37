"""A checkpoint's model weights outside training (eval, generate, export, `model.init_from`, a
distillation teacher), as a lazy mapping: name -> full tensor, read when asked for.

Peak memory is about the largest tensor: each tensor is assembled from its saved chunks (read by
byte range and verified) only when its name is looked up, handed out and forgotten; the optimizer
state is never read. Consumers that write (export) or fill a model (eval) go name by name.
DeepSpeed checkpoints go through DeepSpeed's own converter (memory-mapped partition files).
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Iterator, Mapping
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
EMBEDDING, HEAD = "tok_embeddings.weight", "output.weight"


def tensor_info(tensors: Mapping[str, torch.Tensor], name: str) -> tuple[tuple[int, ...], torch.dtype]:
    """Shape and dtype of one entry, without reading it when the mapping is lazy."""
    info = getattr(tensors, "info", None)
    if info is not None:
        return info(name)
    value = tensors[name]
    return tuple(value.shape), value.dtype


class RenamedTensors(Mapping):
    """`base` under other names (`pairs`: (base name, new name)), still read on lookup: what an
    export to another library's names hands to the writer."""

    def __init__(self, base: Mapping[str, torch.Tensor], pairs: list[tuple[str, str]]) -> None:
        self.base = base
        self.source = {new: old for old, new in pairs}

    def __iter__(self) -> Iterator[str]:
        return iter(self.source)

    def __len__(self) -> int:
        return len(self.source)

    def info(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        return tensor_info(self.base, self.source[name])

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.base[self.source[name]]


class CheckpointTensors(Mapping):
    """The model weights of one of our checkpoints (DCP), each read on lookup. With
    `tie_embeddings`, the head is also listed under its own name (it reads the embedding)."""

    def __init__(self, step_uri: str, tie_embeddings: bool = False, manifest: dict[str, Any] | None = None):
        self.step_uri = step_uri
        manifest = manifest or read_manifest(step_uri)
        raw = read_verified(step_uri, manifest, layout.STATE_METADATA)
        metadata = pickle.loads(raw)
        self.reader = RangeReader(
            raw, lambda name, offset, length: read_range(join(step_uri, name), offset, length), step_uri
        )
        self.reader.set_up_storage_reader(metadata, is_coordinator=True)
        self.entries = {
            key[len(MODEL_PREFIX) :]: entry
            for key, entry in metadata.state_dict_metadata.items()
            if key.startswith(MODEL_PREFIX) and isinstance(entry, TensorStorageMetadata)
        }
        self.aliases = {HEAD: EMBEDDING} if tie_embeddings and EMBEDDING in self.entries else {}

    def __iter__(self) -> Iterator[str]:
        yield from self.entries
        yield from (alias for alias in self.aliases if alias not in self.entries)

    def __len__(self) -> int:
        return len(set(self.entries) | set(self.aliases))

    def __contains__(self, name: object) -> bool:
        return name in self.entries or name in self.aliases

    def info(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        entry = self.entries[self.aliases.get(name, name)]
        return tuple(entry.size), entry.properties.dtype

    def __getitem__(self, name: str) -> torch.Tensor:
        key = self.aliases.get(name, name)
        if key not in self.entries:
            raise KeyError(name)
        entry = self.entries[key]
        full = torch.empty(entry.size, dtype=entry.properties.dtype)
        for chunk in entry.chunks:
            item, data = self.reader.read_item(MetadataIndex(MODEL_PREFIX + key, chunk.offsets))
            target = full
            for dim, (start, length) in enumerate(zip(chunk.offsets, chunk.sizes)):
                target = target.narrow(dim, start, length)
            target.copy_(item_tensor(data, item))
        return full


class DeepSpeedTensors(Mapping):
    """The fp32 weights of a DeepSpeed checkpoint, through DeepSpeed's converter over a local copy
    of the partition files (disk, not memory: the converter memory-maps them and gathers one tensor
    per lookup). The copy lives as long as this object."""

    def __init__(self, step_uri: str, tie_embeddings: bool = False, manifest: dict[str, Any] | None = None):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        manifest = manifest or read_manifest(step_uri)
        names = [n for n in manifest["files"] if n.startswith(layout.DEEPSPEED)]
        self._tmp = tempfile.TemporaryDirectory(prefix="dist_llm_ds_read_")
        for name in names:
            path = os.path.join(self._tmp.name, TAG, name[len(layout.DEEPSPEED) :])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(read_verified(step_uri, manifest, name))
        if any("optim_states" in n for n in names):
            self.lazy = get_fp32_state_dict_from_zero_checkpoint(self._tmp.name, tag=TAG, lazy_mode=True)
        else:  # ZeRO-0: the module is saved whole
            path = os.path.join(self._tmp.name, TAG, "mp_rank_00_model_states.pt")
            self.lazy = torch.load(path, map_location="cpu", weights_only=False, mmap=True)["module"]
        self.lazy = _once(self.lazy)
        if tie_embeddings and EMBEDDING in self.lazy:
            self.lazy[HEAD] = self.lazy[EMBEDDING]

    def __iter__(self) -> Iterator[str]:
        return iter(self.lazy)

    def __len__(self) -> int:
        return len(self.lazy)

    def info(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        return tuple(self.lazy[name].shape), torch.float32

    def __getitem__(self, name: str) -> torch.Tensor:
        value = self.lazy[name]
        return value.float().contiguous() if isinstance(value, torch.Tensor) else value.contiguous().float()


def _once(state: Mapping[str, Any]) -> dict[str, Any]:
    """Each tensor under its first name only: a tied head is the embedding (one object in the
    converter's output, one storage in a saved module)."""
    seen: set[int] = set()
    out = {}
    for name, value in state.items():
        key = value.data_ptr() if isinstance(value, torch.Tensor) else id(value)
        if key not in seen:
            seen.add(key)
            out[name] = value
    return out


def open_model_tensors(step_uri: str, tie_embeddings: bool = False) -> Mapping[str, torch.Tensor]:
    """The model weights of a committed checkpoint of either engine, read on lookup."""
    manifest = read_manifest(step_uri)
    if layout.STATE_METADATA in manifest["files"]:
        return CheckpointTensors(step_uri, tie_embeddings, manifest)
    if any(name.startswith(layout.DEEPSPEED) for name in manifest["files"]):
        return DeepSpeedTensors(step_uri, tie_embeddings, manifest)
    raise CheckpointError(f"{step_uri} holds neither {layout.STATE_METADATA} nor deepspeed/ files")


def model_tensors(step_uri: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) for every model weight in the checkpoint, one at a time; a tied head is
    not repeated (it is the embedding)."""
    tensors = open_model_tensors(step_uri)
    for name in tensors:
        yield name, tensors[name]
