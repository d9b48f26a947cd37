"""Weights to start from: a local Hugging Face model directory or one of our checkpoints.

Continued pretraining (`model.init_from`), distillation teachers (`distill.teacher`) and
fine-tuning backbones all name "a pretrained model" the same way, so one function reads either
kind and returns our model config plus a state_dict our model loads as is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace

import torch
from torch import nn

from dist_llm.checkpoint.discovery import resolve_checkpoint
from dist_llm.checkpoint.offline import open_model_tensors
from dist_llm.checkpoint.state import load_trainer_state
from dist_llm.config import config_from_dict
from dist_llm.errors import CheckpointError, ConfigError, DataError
from dist_llm.interop import import_hf
from dist_llm.models import ModelConfig, build_model


def is_hf_dir(path: str) -> bool:
    """A directory written by transformers' `save_pretrained` (it holds config.json)."""
    return os.path.isfile(os.path.join(path, "config.json"))


def check_pretrained(path: str, key: str) -> None:
    """Before any process is spawned: `path` (the value of config key `key`) is an HF model directory
    or holds a committed checkpoint of ours."""
    if is_hf_dir(path):
        return
    try:
        resolve_checkpoint(path)
    except CheckpointError as exc:
        raise ConfigError(
            f"{key}={path}: neither a Hugging Face model directory (no config.json) nor a "
            f"dist_llm checkpoint ({exc})"
        ) from None


def load_pretrained(path: str) -> tuple[ModelConfig, Mapping[str, torch.Tensor]]:
    """(ModelConfig, fp32 weights by name) of an HF model directory (Llama, BERT, T5) or of a
    checkpoint, checkpoint root or run directory of ours (read tensor by tensor, on lookup)."""
    if is_hf_dir(path):
        return import_hf(path)
    uri = resolve_checkpoint(path)
    cfg = config_from_dict(load_trainer_state(uri)["config"], origin=uri)
    return cfg.model, open_model_tensors(uri, cfg.model.tie_embeddings)


def instantiate(
    model_cfg: ModelConfig, state: Mapping[str, torch.Tensor], device: torch.device | str = "cpu"
) -> nn.Module:
    """Our model with these weights, in eval mode. Filled tensor by tensor, so a lazy `state` (a
    checkpoint read on lookup) costs the model plus its largest tensor, not twice the model."""
    with torch.device("meta"):  # no memory for weights that are overwritten anyway
        model = build_model(model_cfg)
    model.to_empty(device=device)
    model.init_weights()  # re-ties shared weights and rebuilds derived buffers after to_empty
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"the weights do not fit model {model_cfg.arch!r}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}; load them with the model config they were saved with"
        )
    with torch.no_grad():
        for name, target in model.state_dict(keep_vars=True).items():
            target.copy_(state[name])
    return model.eval()


def adopt_pretrained(
    model_cfg: ModelConfig, tokenizer_vocab: int, seq_len: int
) -> tuple[ModelConfig, Mapping[str, torch.Tensor]]:
    """For `model.init_from`: the pretrained model's config (its shape wins over the model section,
    which keeps only its dropout and init_from) and its weights. Refuses a dataset whose token ids
    the model has no embedding for, and samples longer than the model's positions."""
    source = model_cfg.init_from
    pretrained_cfg, state = load_pretrained(source)
    if pretrained_cfg.arch != model_cfg.arch:
        raise ConfigError(
            f"model.init_from={source} is a {pretrained_cfg.arch!r} model but "
            f"model.arch={model_cfg.arch!r}; set model.arch={pretrained_cfg.arch}"
        )
    if tokenizer_vocab > pretrained_cfg.vocab_size:
        raise DataError(
            f"model.init_from={source} has {pretrained_cfg.vocab_size} token embeddings but the "
            f"dataset's tokenizer has {tokenizer_vocab} tokens; prepare the data with the "
            f"model's own tokenizer (dist-llm prep --tokenizer {source})"
        )
    if seq_len > pretrained_cfg.max_seq_len:
        raise ConfigError(
            f"data.seq_len={seq_len} exceeds model.init_from={source}'s "
            f"{pretrained_cfg.max_seq_len} positions; lower data.seq_len"
        )
    return replace(pretrained_cfg, dropout=model_cfg.dropout, init_from=source), state
