"""A weighted mixture of sources in one deterministic sample sequence.

The global sequence is cut into blocks of K samples. Every block holds exactly `counts[i]`
samples of source i (`counts` = the weights as integers summing to K: exact when the weights are
ratios of small integers, e.g. 0.7/0.3 -> K=10 with 7 + 3), in an order shuffled per block from
the seed. So over any window of n samples each source's share is within K/n of its weight.

Each source has its own `GlobalOrder` (own seed, own epochs): its j-th sample in the mixture is
position j of its order, so a small source simply repeats sooner. How many samples of each
source the first `consumed` global samples hold is closed form plus one block (O(K)): the whole
resumable state is the global `consumed_samples`, whatever the world size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from dist_llm.data.order import GlobalOrder
from dist_llm.data.packing import PackedSamples
from dist_llm.errors import DataError
from dist_llm.seeding import derive_seed

MAX_BLOCK = 4096
"""Largest block; weights that are not ratios of integers summing to at most this are rounded."""


@dataclass
class Source:
    """One named, weighted source of training samples ("" = the only one, unnamed)."""

    name: str
    weight: float
    samples: PackedSamples


def block_counts(weights: list[float]) -> list[int]:
    """Samples of each source per block: the smallest exact block, else MAX_BLOCK by largest remainder."""
    # 0.7 and 0.3 are not exact in binary: find the ratios they stand for (7/10, 3/10).
    shares = [Fraction(w / sum(weights)).limit_denominator(10**6) for w in weights]
    shares = [s / sum(shares) for s in shares]
    block = math.lcm(*(s.denominator for s in shares))
    if block <= MAX_BLOCK:
        counts = [int(s * block) for s in shares]
    else:
        counts = [math.floor(s * MAX_BLOCK) for s in shares]
        by_remainder = sorted(range(len(shares)), key=lambda i: (counts[i] - shares[i] * MAX_BLOCK, i))
        for i in by_remainder[: MAX_BLOCK - sum(counts)]:
            counts[i] += 1
    if min(counts) == 0:
        raise DataError(
            f"data.sources weights {weights}: a source below 1/{MAX_BLOCK} of the total would "
            "get no samples at all; raise its weight or drop it"
        )
    return counts


class MixedOrder:
    """Maps a global sample position to (source index, sample id within that source)."""

    def __init__(
        self, sizes: list[int], weights: list[float], source_seeds: list[int], mix_seed: int
    ) -> None:
        self.orders = [GlobalOrder(n, seed) for n, seed in zip(sizes, source_seeds)]
        self.counts = block_counts(weights)
        self.block = sum(self.counts)
        self.mix_seed = mix_seed
        self._unshuffled = np.repeat(np.arange(len(sizes)), self.counts)
        self._patterns: dict[int, np.ndarray] = {}

    def _pattern(self, block: int) -> np.ndarray:
        """Source index of each slot of `block`."""
        if len(self.counts) == 1:
            return self._unshuffled
        if block not in self._patterns:
            if len(self._patterns) > 2:  # a step touches one or two blocks
                self._patterns.clear()
            gen = torch.Generator().manual_seed(derive_seed(self.mix_seed, f"block{block}"))
            self._patterns[block] = self._unshuffled[torch.randperm(self.block, generator=gen).numpy()]
        return self._patterns[block]

    def positions(self, consumed: int) -> list[int]:
        """Samples of each source among the first `consumed` global samples."""
        block, offset = divmod(consumed, self.block)
        partial = np.bincount(self._pattern(block)[:offset], minlength=len(self.counts))
        return [block * c + int(p) for c, p in zip(self.counts, partial)]

    def epochs(self, consumed: int) -> list[int]:
        """Completed passes over each source after `consumed` global samples."""
        return [pos // order.num_samples for pos, order in zip(self.positions(consumed), self.orders)]

    def sample_ids(self, start: int, count: int) -> list[tuple[int, int]]:
        """(source, sample id) for global positions [start, start+count)."""
        first, last = self.positions(start), self.positions(start + count)
        per_source = [iter(order.sample_ids(a, b - a)) for order, a, b in zip(self.orders, first, last)]
        out = []
        for pos in range(start, start + count):
            block, offset = divmod(pos, self.block)
            source = int(self._pattern(block)[offset])
            out.append((source, next(per_source[source])))
        return out
