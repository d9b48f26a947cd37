"""One deterministic global sample order, derived from the seed alone.

Sample i of the whole run (counting across epochs) is `permutation(seed, epoch)[i % n]`.
Nothing depends on the world size, so any number of ranks can pick up the order anywhere.
"""

from __future__ import annotations

import torch

from dist_llm.seeding import derive_seed


class GlobalOrder:
    """Maps a global sample counter to a sample id; reshuffles each epoch."""

    def __init__(self, num_samples: int, seed: int) -> None:
        if num_samples <= 0:
            raise ValueError("an order needs at least one sample")
        self.num_samples = num_samples
        self.seed = seed
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.int64)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, f"epoch{epoch}"))
            self._perm = torch.randperm(self.num_samples, generator=gen)
            self._epoch = epoch
        return self._perm

    def sample_ids(self, start: int, count: int) -> list[int]:
        """Sample ids for global positions [start, start+count), crossing epochs if needed."""
        ids: list[int] = []
        pos = start
        while len(ids) < count:
            epoch, offset = divmod(pos, self.num_samples)
            take = min(count - len(ids), self.num_samples - offset)
            ids.extend(self._permutation(epoch)[offset : offset + take].tolist())
            pos += take
        return ids
