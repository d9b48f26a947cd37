"""Packed fixed-length samples in one global order, sliced per data-parallel rank.

Sample s is tokens [s*L, s*L + L + 1) of the split's flat stream (documents are packed
back-to-back, separated by EOS); inputs are the first L tokens and labels the last L.
The resumable state is four small values, independent of the world size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from dist_llm.data.order import GlobalOrder
from dist_llm.data.shards import TokenShards
from dist_llm.errors import DataError


@dataclass
class DataState:
    seed: int
    consumed_samples: int
    """Samples of the global order already trained on (all ranks together)."""
    epoch: int
    fingerprint: str
    seq_len: int


class PackedSamples:
    """Fixed windows over a split's token stream."""

    def __init__(self, shards: TokenShards, seq_len: int) -> None:
        self.shards = shards
        self.seq_len = seq_len
        # Window s needs L+1 tokens starting at s*L (labels are inputs shifted by one).
        self.num_samples = (shards.num_tokens - 1) // seq_len
        if self.num_samples <= 0:
            raise DataError(f"{shards.data_dir}: split {shards.split!r} has {shards.num_tokens} tokens, "
                            f"fewer than one sample of data.seq_len={seq_len}+1; "
                            "lower data.seq_len or add data")

    def batch(self, sample_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.stack([self.shards.read(s * self.seq_len, self.seq_len + 1) for s in sample_ids])
        tokens = torch.from_numpy(rows)
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


class TrainBatches:
    """Yields, per optimizer step, this rank's micro-batches of the next global batch."""

    def __init__(self, samples: PackedSamples, seed: int, global_batch: int, micro_batch: int,
                 rank: int, world_size: int) -> None:
        if global_batch % (micro_batch * world_size):
            raise DataError(f"global batch {global_batch} not divisible by micro batch {micro_batch} "
                            f"x world size {world_size}")
        self.samples = samples
        self.order = GlobalOrder(samples.num_samples, seed)
        self.global_batch = global_batch
        self.micro_batch = micro_batch
        self.rank = rank
        self.world_size = world_size
        self.consumed_samples = 0

    @property
    def per_rank(self) -> int:
        return self.global_batch // self.world_size

    def next_step(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's contiguous slice of the next global batch, split into micro-batches."""
        start = self.consumed_samples + self.rank * self.per_rank
        ids = self.order.sample_ids(start, self.per_rank)
        self.consumed_samples += self.global_batch
        return [self.samples.batch(ids[i:i + self.micro_batch])
                for i in range(0, self.per_rank, self.micro_batch)]

    def state(self) -> DataState:
        return DataState(seed=self.order.seed, consumed_samples=self.consumed_samples,
                         epoch=self.consumed_samples // self.samples.num_samples,
                         fingerprint=self.samples.shards.fingerprint, seq_len=self.samples.seq_len)

    def load_state(self, state: dict) -> None:
        mine = asdict(self.state())
        for key in ("seed", "fingerprint", "seq_len"):
            if state[key] != mine[key]:
                raise DataError(f"checkpoint data state {key}={state[key]!r} does not match this run's "
                                f"{key}={mine[key]!r}; resume with the same dataset, data.seq_len and "
                                "train.seed, or start a new run directory")
        self.consumed_samples = int(state["consumed_samples"])


def eval_batches(samples: PackedSamples, micro_batch: int, num_batches: int, rank: int,
                 world_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same first validation windows every time, split across ranks (no shuffling)."""
    total = min(samples.num_samples, micro_batch * num_batches * world_size)
    ids = list(range(total))[rank::world_size]
    return [samples.batch(ids[i:i + micro_batch]) for i in range(0, len(ids), micro_batch)]
