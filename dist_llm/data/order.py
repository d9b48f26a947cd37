"""One deterministic global sample order, derived from the seed alone.

Sample i of the whole run (counting across epochs) is `permutation(seed, epoch)[i % n]`.
Nothing depends on the world size, so any number of ranks can pick up the order anywhere.

The permutation is never stored: it is a keyed bijection of [0, n) evaluated per position, so a
lookup costs memory and time in proportion to the ids asked for, whatever n is (2.4e9 samples
would otherwise be a 19 GB index per rank, rebuilt at every start and epoch). The bijection is a
balanced Feistel network over the smallest even-bit domain 2^(2h) >= n: a Feistel network is a
permutation whatever its round function, and walking the cycle (applying it again while the
result is >= n) restricts it to a permutation of [0, n). The domain is at most 4n, so a position
takes at most 4 network evaluations on average.
"""

from __future__ import annotations

import numpy as np

from dist_llm.seeding import derive_seed

ROUNDS = 6
"""Feistel rounds: 4 make a keyed pseudorandom permutation from a pseudorandom round function
(Luby-Rackoff); 2 more are margin for a fast mixer in place of a cryptographic one."""


def _mix(x: np.ndarray) -> np.ndarray:
    """A 64-bit avalanche mixer (xorshift-multiply): every input bit flips about half the output bits."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class GlobalOrder:
    """Maps a global sample counter to a sample id; a new permutation each epoch."""

    def __init__(self, num_samples: int, seed: int) -> None:
        if num_samples <= 0:
            raise ValueError("an order needs at least one sample")
        self.num_samples = num_samples
        self.seed = seed
        self._half = max(1, ((num_samples - 1).bit_length() + 1) // 2)
        self._mask = np.uint64((1 << self._half) - 1)

    def _round_keys(self, epoch: int) -> list[np.uint64]:
        epoch_seed = derive_seed(self.seed, f"epoch{epoch}")
        return [np.uint64(derive_seed(epoch_seed, f"round{r}")) for r in range(ROUNDS)]

    def _feistel(self, x: np.ndarray, keys: list[np.uint64]) -> np.ndarray:
        half = np.uint64(self._half)
        left, right = x >> half, x & self._mask
        for key in keys:
            left, right = right, left ^ (_mix(right ^ key) & self._mask)
        return (left << half) | right

    def permute(self, offsets: np.ndarray, epoch: int) -> np.ndarray:
        """Sample ids at these offsets (each in [0, num_samples)) of `epoch`'s permutation."""
        keys = self._round_keys(epoch)
        ids = self._feistel(np.asarray(offsets, dtype=np.int64).astype(np.uint64), keys)
        walking = np.flatnonzero(ids >= self.num_samples)
        while walking.size:
            ids[walking] = self._feistel(ids[walking], keys)
            walking = walking[ids[walking] >= self.num_samples]
        return ids.astype(np.int64)

    def sample_ids(self, start: int, count: int) -> list[int]:
        """Sample ids for global positions [start, start+count), crossing epochs if needed."""
        ids: list[int] = []
        pos = start
        while len(ids) < count:
            epoch, offset = divmod(pos, self.num_samples)
            take = min(count - len(ids), self.num_samples - offset)
            ids.extend(self.permute(np.arange(offset, offset + take, dtype=np.int64), epoch).tolist())
            pos += take
        return ids
