"""A fine-tuned model on disk and back: `model.safetensors` (backbone + head), `finetune.json` (task,
label names, backbone config, run config, metrics) and a copy of the tokenizer, so the directory is
usable without the pretraining run or its dataset."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from data_prep.tokenizer import Tokenizer, load_tokenizer
from dist_llm.errors import CheckpointError
from dist_llm.finetune.backbone import make_backbone
from dist_llm.finetune.config import FinetuneConfig
from dist_llm.finetune.heads import HEADS, Classifier
from dist_llm.models import ModelConfig, build_model

WEIGHTS = "model.safetensors"
SUMMARY = "finetune.json"
METRICS = "metrics.jsonl"


def _without_aliases(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses two names for one tensor (a tied LM head is the embedding): keep the first
    name and record the others, so loading can restore them."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_name: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in first_name:
            aliases[name] = first_name[key]
        else:
            first_name[key] = name
            kept[name] = tensor.detach().cpu().contiguous()
    return kept, aliases


def _copy_tokenizer(tokenizer: Tokenizer, out_dir: str) -> str:
    """The tokenizer next to the weights; returns its name inside out_dir."""
    if os.path.isdir(tokenizer.path):
        name = "tokenizer"
        shutil.copytree(tokenizer.path, os.path.join(out_dir, name), dirs_exist_ok=True)
    else:
        name = "tokenizer.model"
        shutil.copyfile(tokenizer.path, os.path.join(out_dir, name))
    return name


def save_finetuned(
    out_dir: str,
    model: Classifier,
    cfg: FinetuneConfig,
    labels: list[str],
    model_cfg: ModelConfig,
    tokenizer: Tokenizer,
    summary: dict[str, Any],
) -> None:
    """Write weights, tokenizer and finetune.json (summary holds the metrics and run facts)."""
    os.makedirs(out_dir, exist_ok=True)
    tensors, aliases = _without_aliases(model.state_dict())
    save_file(
        tensors, os.path.join(out_dir, WEIGHTS), metadata={"format": "pt", "aliases": json.dumps(aliases)}
    )
    record = {
        "task": cfg.task,
        "labels": labels,
        "arch": model_cfg.arch,
        "model": asdict(model_cfg),
        "tokenizer": _copy_tokenizer(tokenizer, out_dir),
        "max_length": cfg.max_length,
        "config": asdict(cfg),
        **summary,
    }
    with open(os.path.join(out_dir, SUMMARY), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)


@dataclass
class Finetuned:
    model: Classifier
    task: str
    labels: list[str]
    tokenizer: Tokenizer
    max_length: int
    summary: dict[str, Any]
    """Everything finetune.json holds (config, per-epoch, best and final metrics)."""


def load_finetuned(out_dir: str, device: str = "cpu") -> Finetuned:
    """A directory written by `finetune`, in eval mode."""
    path = os.path.join(out_dir, SUMMARY)
    if not os.path.isfile(path):
        raise CheckpointError(f"{out_dir}: no {SUMMARY}; pass a directory written by dist-llm finetune --out")
    with open(path, encoding="utf-8") as f:
        summary = json.load(f)
    model_cfg = ModelConfig(**summary["model"])
    model = HEADS[summary["task"]](
        make_backbone(build_model(model_cfg)), len(summary["labels"]), summary["config"]["dropout"]
    )
    weights = os.path.join(out_dir, WEIGHTS)
    state = load_file(weights)
    with safe_open(weights, "pt") as fh:
        metadata = fh.metadata() or {}
    for alias, name in json.loads(metadata.get("aliases", "{}")).items():
        state[alias] = state[name]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights}: does not match the model {SUMMARY} describes ({exc})") from None
    return Finetuned(
        model=model.to(device).eval(),
        task=summary["task"],
        labels=summary["labels"],
        tokenizer=load_tokenizer(os.path.join(out_dir, summary["tokenizer"])),
        max_length=summary["max_length"],
        summary=summary,
    )
