"""Hugging Face model directories: export a checkpoint to one, import one to continue pretraining.

An exported directory is what `AutoModelFor<...>.from_pretrained(dir)` (CausalLM for the decoder,
MaskedLM for the encoder, Seq2SeqLM for the encoder-decoder) and `AutoTokenizer.from_pretrained(dir)`
load with no dist_llm installed: `model.safetensors`, `config.json`, `generation_config.json` and
the tokenizer files.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import torch

from dist_llm.checkpoint import layout
from dist_llm.checkpoint.discovery import resolve_checkpoint
from dist_llm.checkpoint.offline import open_model_tensors
from dist_llm.checkpoint.state import load_trainer_state
from dist_llm.config import config_from_dict
from dist_llm.data.sources import tokenizer_path
from dist_llm.errors import CheckpointError, ConfigError, DataError
from dist_llm.export import DEFAULT_MAX_SHARD_BYTES, DTYPES, write_safetensors
from dist_llm.models.config import ModelConfig


@dataclass(frozen=True)
class Family:
    """One model family's HF counterpart: the converter module (imported on use: each pulls in
    transformers) and its two functions, which every family spells the same way:
    `to_hf(state_dict, ModelConfig) -> (PretrainedConfig, hf_state_dict)` (token ids left for the
    caller) and `from_hf(hf_model_or_dir) -> (ModelConfig, state_dict)`."""

    module: str
    to_hf: str
    from_hf: str
    model_type: str

    def function(self, name: str) -> Callable[..., Any]:
        return getattr(importlib.import_module(self.module), name)


FAMILIES = {
    "decoder": Family("dist_llm.interop.hf_llama", "to_hf_llama", "from_hf_llama", "llama"),
    "encoder": Family("dist_llm.interop.hf_bert", "to_hf_bert", "from_hf_bert", "bert"),
    "encoder_decoder": Family("dist_llm.interop.hf_t5", "to_hf_t5", "from_hf_t5", "t5"),
}
"""model.arch -> its HF family."""

# The model files we write; a copied HF tokenizer directory must not bring its own.
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json")


def save_hf_tokenizer(tokenizer_path: str, out_dir: str, model_max_length: int) -> None:
    """Tokenizer files into out_dir: an HF tokenizer directory is copied file by file (so it loads
    exactly as our `HFTokenizer` loads it); a sentencepiece model is rebuilt as a fast tokenizer
    that encodes like ours (see `hf_tokenizer`)."""
    if os.path.isdir(tokenizer_path):
        for name in sorted(os.listdir(tokenizer_path)):
            source = os.path.join(tokenizer_path, name)
            if name not in MODEL_FILES and os.path.isfile(source):
                shutil.copyfile(source, os.path.join(out_dir, name))
        return
    from dist_llm.interop.hf_tokenizer import sentencepiece_to_hf

    sentencepiece_to_hf(tokenizer_path, model_max_length).save_pretrained(out_dir)


def save_hf_model(
    state_dict: Mapping[str, torch.Tensor],
    model_cfg: ModelConfig,
    out_dir: str,
    tokenizer_path: str,
    dtype: str = "fp32",
    metadata: dict[str, str] | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> str:
    """Write a complete HF directory (Llama, BERT or T5 by `model_cfg.arch`) from our model's
    state_dict and config plus the tokenizer it was trained with; returns out_dir.
    Checkpoint-free, so tests and other entry points (e.g. a model in memory) share it with
    `export_hf`."""
    from transformers import GenerationConfig

    from data_prep.tokenizer import load_tokenizer

    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not one of {sorted(DTYPES)}")
    tokenizer = load_tokenizer(tokenizer_path)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise DataError(
            f"{tokenizer_path}: tokenizer has {tokenizer.vocab_size} tokens but the model only "
            f"{model_cfg.vocab_size}; pass the dataset the model was trained on"
        )
    family = FAMILIES[model_cfg.arch]
    hf_config, hf_state = family.function(family.to_hf)(state_dict, model_cfg)
    hf_config.bos_token_id, hf_config.eos_token_id = tokenizer.bos_id, tokenizer.eos_id
    hf_config.pad_token_id = tokenizer.pad_id
    if model_cfg.arch == "encoder_decoder":  # T5 starts decoding from the pad token
        hf_config.decoder_start_token_id = tokenizer.pad_id
    hf_config.dtype = DTYPES[dtype]
    os.makedirs(out_dir, exist_ok=True)
    save_hf_tokenizer(tokenizer_path, out_dir, model_cfg.max_seq_len)
    write_safetensors(hf_state, out_dir, DTYPES[dtype], metadata or {}, max_shard_bytes)
    hf_config.save_pretrained(out_dir)
    start = {"decoder_start_token_id": tokenizer.pad_id} if model_cfg.arch == "encoder_decoder" else {}
    GenerationConfig(
        bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id, **start
    ).save_pretrained(out_dir)
    return out_dir


def export_hf(
    checkpoint: str,
    out_dir: str,
    dtype: str = "fp32",
    data_path: str | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> str:
    """A checkpoint (run dir, checkpoint root or step dir) as an HF Llama directory; returns out_dir.
    The tokenizer comes from `data_path`'s manifest, by default the run's (first) training dataset."""
    uri = resolve_checkpoint(checkpoint)
    trainer_state = load_trainer_state(uri)
    cfg = config_from_dict(trainer_state["config"], origin=f"{uri}/{layout.TRAINER}")
    data = data_path or cfg.data.source_list()[0].path
    try:
        tok_path = tokenizer_path(data)
    except DataError as exc:
        raise DataError(
            f"{exc}; the export needs the run's tokenizer: pass --data with the dataset "
            "directory the model was trained on"
        ) from exc
    return save_hf_model(
        open_model_tensors(uri),
        cfg.model,
        out_dir,
        tok_path,
        dtype,
        metadata={"step": str(trainer_state["step"]), "source": uri},
        max_shard_bytes=max_shard_bytes,
    )


def import_hf(
    hf_dir: str, dtype: torch.dtype = torch.float32
) -> tuple[ModelConfig, Mapping[str, torch.Tensor]]:
    """(ModelConfig, state_dict) for our model of the matching family from a local HF model directory,
    cast to `dtype` (fp32 by default: continued pretraining keeps fp32 master weights whatever the
    file holds). Dispatches on config.json's model_type."""
    config_file = os.path.join(hf_dir, "config.json")
    try:
        with open(config_file, encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{config_file}: cannot read ({exc}); model.init_from must be a local "
            "directory written by save_pretrained()"
        ) from exc
    families = {f.model_type: f for f in FAMILIES.values()}
    if model_type not in families:
        raise ConfigError(
            f"{config_file}: model_type={model_type!r} cannot be imported; supported: {sorted(families)}"
        )
    family = families[model_type]
    model_cfg, state = family.function(family.from_hf)(hf_dir)
    cast = {id(t): t.to(dtype) for t in state.values()}  # by identity: a tied head stays tied
    return model_cfg, {k: cast[id(t)] for k, t in state.items()}
