"""What one fine-tuning run is: the backbone, the labelled files, the fields to read and the
optimisation settings. One flat dataclass because every field is one `dist-llm finetune` flag, and
`validate` checks all of them before any file is read or model loaded."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from dist_llm.errors import ConfigError

TASKS = ("seq", "token")
PRECISIONS = ("fp32", "bf16")
# Readers by file name ending. No ".json": that is as often one JSON array as JSON lines.
FORMATS = {".jsonl": "jsonl", ".jsonl.gz": "jsonl", ".csv": "csv", ".csv.gz": "csv"}


def file_format(path: str) -> Optional[str]:
    """ "jsonl" or "csv" from the file name, None for an unsupported one."""
    name = path.lower()
    for ending, kind in FORMATS.items():
        if name.endswith(ending):
            return kind
    return None


@dataclass
class FinetuneConfig:
    backbone: str
    """A dist_llm checkpoint (step dir, checkpoint root or run dir) or a local HF model directory."""
    train: str
    """Labelled training examples: .jsonl or .csv, optionally gzipped (.jsonl.gz, .csv.gz)."""
    eval: str
    """Labelled evaluation examples (same format rules); scored after every epoch."""
    out: str
    """Output directory: model.safetensors, finetune.json, metrics.jsonl."""
    task: str = "seq"
    """seq = one label per example (sequence classification); token = one tag per word."""
    text_field: str = "text"
    """seq: the field holding the text to classify."""
    text_pair_field: Optional[str] = None
    """seq: a second text field for pair tasks (entailment, paraphrase); None = single texts."""
    label_field: str = "label"
    """seq: the field holding the label (string or integer)."""
    tokens_field: str = "tokens"
    """token: the field holding the words (a list, or a whitespace-separated string)."""
    tags_field: str = "tags"
    """token: the field holding one tag per word (same forms as tokens_field)."""
    outside_tag: str = "O"
    """token: the "no entity" tag that F1 leaves out (token accuracy still counts it)."""
    epochs: int = 3
    """Passes over the training file."""
    batch_size: int = 16
    """Examples per optimizer step, over all ranks together."""
    lr: float = 5e-5
    """Peak AdamW learning rate, reached after warmup and decayed linearly to 0."""
    warmup_ratio: float = 0.1
    """Share of all optimizer steps spent warming the learning rate up from 0."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay on matrices (not on biases and norm gains)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""
    dropout: float = 0.1
    """Dropout before the classification layer (the backbone keeps its pretrained dropout)."""
    max_length: int = 128
    """Tokens per example including the family's special tokens; longer examples are truncated."""
    seed: int = 1234
    """Seeds head init, example order and dropout; CPU runs are bitwise reproducible."""
    precision: str = "fp32"
    """fp32, or bf16 autocast (weights and optimizer stay fp32)."""
    tokenizer: Optional[str] = None
    """A sentencepiece .model or HF tokenizer directory; None = the backbone's own."""

    def validate(self) -> None:
        """Raise ConfigError naming the first bad flag and value, before anything is loaded."""
        if self.task not in TASKS:
            raise ConfigError(f"--task {self.task!r} is not one of {list(TASKS)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"--precision {self.precision!r} is not one of {list(PRECISIONS)} "
                "(fp16 needs loss scaling, which fine-tuning does not implement)"
            )
        for flag, path in (("--train", self.train), ("--eval", self.eval)):
            if not os.path.isfile(path):
                raise ConfigError(f"{flag} {path}: no such file")
            if file_format(path) is None:
                raise ConfigError(
                    f"{flag} {path}: unsupported file type; name it {', '.join(sorted(FORMATS))}"
                )
        if self.tokenizer and not os.path.exists(self.tokenizer):
            raise ConfigError(f"--tokenizer {self.tokenizer}: no such file or directory")
        if "://" not in self.backbone and not os.path.exists(self.backbone):  # s3:// checkpoints load too
            raise ConfigError(
                f"backbone {self.backbone}: no such directory; pass a dist_llm run or "
                "checkpoint directory or a local Hugging Face model directory"
            )
        fields = ("text_field", "label_field") if self.task == "seq" else ("tokens_field", "tags_field")
        for key in fields:
            if not getattr(self, key):
                raise ConfigError(f"--{key.replace('_', '-')} must not be empty")
        if self.task == "seq" and self.text_pair_field in (self.text_field, self.label_field):
            raise ConfigError(
                f"--text-pair-field {self.text_pair_field!r} repeats another field; "
                "name the second text's field"
            )
        for key in ("epochs", "batch_size", "max_length"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"--{key.replace('_', '-')} {getattr(self, key)} must be > 0")
        if self.max_length < 4:
            raise ConfigError(
                f"--max-length {self.max_length} leaves no room for text next to the "
                "special tokens; use at least 4"
            )
        if self.lr <= 0:
            raise ConfigError(f"--lr {self.lr} must be > 0")
        for key in ("warmup_ratio", "dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"{key}={getattr(self, key)} must be in [0, 1)")
        for key in ("weight_decay", "grad_clip"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 0")
