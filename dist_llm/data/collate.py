"""Collators: how raw token windows become the model inputs of one micro-batch (the objective).

The loader cuts the token stream into windows (`Collator.window` says how long and how far apart),
and hands each micro-batch to the collator as a numpy array `[B, window.length]` of int64 tokens
together with one seed per row. A row's seed is derived from the train seed and the row's *global*
sample index (its position in the run's sample sequence), never from the rank, step or RNG state,
so a random objective draws the same noise for a sample on any world size and after a resume.

Plugging in another objective (issue 6) is one class, one `COLLATORS` entry and its name among
the `DataConfig.objective` choices:

- masked LM: `window` = `Window(stride=L, length=L)`; `__call__` draws positions to mask with
  `np.random.default_rng(seed)` per row and returns (masked ids, labels with the ignore index -100
  where nothing is masked).
- span corruption (T5): `window` reads as many raw tokens as give `L` encoder tokens after the
  spans are replaced by sentinels; `__call__` builds encoder inputs and decoder targets per row.

Each returns the `(inputs, labels)` pair the engines take; an objective that needs more tensors
widens that pair together with `Engine.train_step`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch

from dist_llm.errors import ConfigError
from dist_llm.seeding import derive_seed


@dataclass(frozen=True)
class Window:
    """Sample s covers raw tokens [s * stride, s * stride + length) of a split's token stream."""

    stride: int
    length: int


class Collator(Protocol):
    def window(self, seq_len: int) -> Window:
        """The raw tokens one sample needs for a model context of `seq_len` tokens."""
        ...

    def __call__(self, windows: np.ndarray, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Model inputs for a micro-batch of windows (`[B, length]` int64, one seed per row)."""
        ...


class CausalLMCollator:
    """Next-token prediction: inputs are a window's first L tokens, labels the last L."""

    def window(self, seq_len: int) -> Window:
        return Window(stride=seq_len, length=seq_len + 1)  # neighbouring windows share one token

    def __call__(self, windows: np.ndarray, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.from_numpy(windows)
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


COLLATORS: dict[str, Callable[[], Collator]] = {"causal": CausalLMCollator}
"""`data.objective` -> collator factory."""


def build_collator(objective: str) -> Collator:
    if objective not in COLLATORS:
        raise ConfigError(f"data.objective={objective!r} has no collator; choose from {sorted(COLLATORS)}")
    return COLLATORS[objective]()


def sample_seeds(base_seed: int, sample_indices: list[int]) -> list[int]:
    """One seed per global sample index (see the module docstring)."""
    return [derive_seed(base_seed, f"sample{index}") for index in sample_indices]
