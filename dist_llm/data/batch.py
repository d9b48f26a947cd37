"""What flows from the data loader to the engines: a `Batch` of model inputs, and the `Collator`
protocol that makes one out of raw token windows (see `collate` for the objectives)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from dist_llm.errors import DataError

Batch = dict[str, torch.Tensor]
"""Model inputs keyed by `forward` keyword (input_ids, labels, ...): engines call `model(**batch)`."""


@dataclass(frozen=True)
class Window:
    """Sample s covers raw tokens [s * stride, s * stride + length) of a split's token stream."""

    stride: int
    length: int


class Collator(Protocol):
    def window(self, seq_len: int) -> Window:
        """The raw tokens one sample needs for a model context of `seq_len` tokens."""
        ...

    def __call__(self, windows: np.ndarray, seeds: list[int]) -> Batch:
        """Model inputs for a micro-batch of windows (`[B, length]` int64, one seed per row)."""
        ...


def require_token_ids(tokens: dict, keys: tuple[str, ...], purpose: str) -> None:
    """DataError unless the manifest's tokenizer block has every id in `keys` (datasets prepared
    before an objective existed lack the ids it needs)."""
    missing = [key for key in keys if tokens.get(key) is None]
    if missing:
        raise DataError(
            f"dataset manifest: the tokenizer block lacks {missing}, which {purpose}; "
            "re-run `dist-llm prep` to record them"
        )
