"""Fixed windows over a split's token stream: documents packed back-to-back, separated by EOS.

Sample s is raw tokens [s*stride, s*stride + length) (the collator's `Window`; for causal LM
stride L and length L+1, so labels can be the inputs shifted by one).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dist_llm.data.batch import Window
from dist_llm.data.collate import CausalLMCollator
from dist_llm.data.shards import Piece, TokenShards
from dist_llm.errors import DataError


class PackedSamples:
    def __init__(self, shards: TokenShards, seq_len: int, window: Window | None = None) -> None:
        self.shards = shards
        self.seq_len = seq_len
        self.window = window or CausalLMCollator().window(seq_len)
        if shards.num_tokens < self.window.length:
            raise DataError(
                f"{shards.data_dir}: split {shards.split!r} has {shards.num_tokens} tokens, "
                f"fewer than one sample of data.seq_len={seq_len} needs ({self.window.length}); "
                "lower data.seq_len or add data"
            )
        self.num_samples = (shards.num_tokens - self.window.length) // self.window.stride + 1

    def span(self, sample_id: int) -> tuple[int, int]:
        """(first token, length) of a sample's window in the split's token stream."""
        return sample_id * self.window.stride, self.window.length

    def pieces(self, sample_id: int) -> list[Piece]:
        """The shard pieces a sample's window reads, from the index alone (nothing is opened)."""
        return self.shards.pieces(*self.span(sample_id))

    def windows(self, sample_ids: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """The windows of these samples as rows of an int64 array (`out` when given)."""
        if out is None:
            out = np.empty((len(sample_ids), self.window.length), dtype=np.int64)
        for row, s in enumerate(sample_ids):
            self.shards.read(*self.span(s), out=out[row])
        return out

    def prefetch(self, sample_ids: Sequence[int]) -> None:
        """Start fetching the data these samples read (remote datasets)."""
        for s in sample_ids:
            self.shards.prefetch(*self.span(s))
