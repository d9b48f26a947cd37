"""Consolidated weights out of any checkpoint, as safetensors (fp32 or bf16).

Any engine's sharded checkpoint is read tensor by tensor, so this works the same for FSDP/TP/PP
and ZeRO runs. HF-transformers directories are `--format hf`, see `dist_llm.interop`.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file

from dist_llm.checkpoint.discovery import resolve_checkpoint
from dist_llm.checkpoint.offline import model_tensors
from dist_llm.checkpoint.state import load_trainer_state

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def export_safetensors(checkpoint: str, out_dir: str, dtype: str = "fp32") -> str:
    """Write `model.safetensors` + `config.json` (our full config) into out_dir; returns the file path."""
    uri = resolve_checkpoint(checkpoint)
    trainer_state = load_trainer_state(uri)
    tied = trainer_state["config"]["model"]["tie_embeddings"]
    # A tied head is stored once, as the embedding (safetensors refuses aliases; loaders re-tie it).
    tensors = {k: v.to(DTYPES[dtype]).contiguous() for k, v in model_tensors(uri)}
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "model.safetensors")
    save_file(
        tensors,
        path,
        metadata={
            "format": "pt",
            "step": str(trainer_state["step"]),
            "tie_embeddings": str(tied),
            "source": uri,
        },
    )
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(trainer_state["config"], f, indent=1)
    return path
