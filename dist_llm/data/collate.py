"""Collators: how raw token windows become the model inputs of one micro-batch (the objective).

The loader cuts the token stream into windows (`Collator.window` says how long and how far apart),
and hands each micro-batch to the collator as a numpy array `[B, window.length]` of int64 tokens
together with one seed per row. A row's seed is derived from the train seed and the row's *global*
sample index (its position in the run's sample sequence), never from the rank, step or RNG state,
so a random objective draws the same noise for a sample on any world size and after a resume.

The objectives (`data.objective`, matched to `model.arch` by the config check):

- causal (decoder): inputs a window's first L tokens, labels the next token of each;
- mlm (encoder, `masked_lm.py`): BERT's masking, optionally with next-sentence or sentence-order
  prediction;
- span_corruption (encoder_decoder, `span_corruption.py`): T5's sentinel-replaced spans.

A collator returns a `Batch`: tensors keyed by the model's `forward` keyword arguments, so engines
call `model(**batch)` without knowing the objective. Every batch has `labels` (-100 = not scored),
which evaluation uses to weight a batch's mean loss by its scored tokens.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from dist_llm.config import DataConfig
from dist_llm.data.batch import Batch, Collator, Window
from dist_llm.data.masked_lm import MaskedLMCollator
from dist_llm.data.span_corruption import SpanCorruptionCollator, span_lengths
from dist_llm.errors import ConfigError
from dist_llm.seeding import derive_seed


class CausalLMCollator:
    """Next-token prediction: inputs are a window's first L tokens, labels the last L."""

    def window(self, seq_len: int) -> Window:
        return Window(stride=seq_len, length=seq_len + 1)  # neighbouring windows share one token

    def __call__(self, windows: np.ndarray, seeds: list[int]) -> Batch:
        tokens = torch.from_numpy(windows)
        return {"input_ids": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous()}


def _masked_lm(data: DataConfig, tokens: dict) -> Collator:
    return MaskedLMCollator(tokens, data.mask_prob, data.sentence_task)


def _span_corruption(data: DataConfig, tokens: dict) -> Collator:
    return SpanCorruptionCollator(tokens, data.noise_density, data.mean_span_length)


COLLATORS: dict[str, Callable[[DataConfig, dict], Collator]] = {
    "causal": lambda data, tokens: CausalLMCollator(),
    "mlm": _masked_lm,
    "span_corruption": _span_corruption,
}
"""`data.objective` -> factory(data config, the manifest's `tokenizer` block) -> collator."""


def build_collator(data: DataConfig, tokens: dict) -> Collator:
    """The collator of `data.objective`; `tokens` (vocab size, special and sentinel ids) is the
    dataset manifest's `tokenizer` block."""
    if data.objective not in COLLATORS:
        raise ConfigError(
            f"data.objective={data.objective!r} has no collator; choose from {sorted(COLLATORS)}"
        )
    return COLLATORS[data.objective](data, tokens)


def sample_seeds(base_seed: int, sample_indices: list[int]) -> list[int]:
    """One seed per global sample index (see the module docstring)."""
    return [derive_seed(base_seed, f"sample{index}") for index in sample_indices]


def target_length(data: DataConfig) -> int | None:
    """Decoder tokens per sample of an encoder-decoder objective (its FLOPs depend on them); None for
    the single-stack objectives."""
    if data.objective != "span_corruption":
        return None
    return span_lengths(data.seq_len, data.noise_density, data.mean_span_length).targets
