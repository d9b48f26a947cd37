"""One global sample sequence (a mixture of sources), sliced per data-parallel rank and collated.

Step k consumes global samples [k*B, (k+1)*B); rank r of W takes the contiguous r-th slice of
B/W. The resumable state is a few small values, independent of the world size: everything else
(which source, which sample, which epoch) is computed from `consumed_samples`.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import numpy as np

from dist_llm.data.batch import Batch, Collator
from dist_llm.data.collate import sample_seeds
from dist_llm.data.mixture import MixedOrder, Source
from dist_llm.data.packing import PackedSamples
from dist_llm.errors import DataError
from dist_llm.seeding import derive_seed


@dataclass
class DataState:
    seed: int
    consumed_samples: int
    """Samples of the global sequence already trained on (all ranks together)."""
    epoch: int
    """Completed passes over the data (for a mixture: over the source that repeats most)."""
    fingerprint: str
    """The data (and, for a mixture, the names and weights); a resume refuses anything else."""
    seq_len: int
    sources: dict[str, str] = field(default_factory=dict)
    """Mixtures only: source name -> that source's data fingerprint, to say which one changed."""


def source_seeds(seed: int, sources: list[Source]) -> list[int]:
    """The only source uses the data seed itself (so `data.path` runs keep their order); in a
    mixture each source's order derives from its name, so adding a source leaves others' orders."""
    if len(sources) == 1:
        return [seed]
    return [derive_seed(seed, f"source/{s.name}") for s in sources]


def mixture_fingerprint(sources: list[Source]) -> str:
    if len(sources) == 1:
        return sources[0].samples.shards.fingerprint
    h = hashlib.sha256()
    for s in sources:
        h.update(f"{s.name}:{s.weight!r}:{s.samples.shards.fingerprint};".encode())
    return h.hexdigest()[:16]


class TrainBatches:
    """Yields, per optimizer step, this rank's collated micro-batches of the next global batch."""

    def __init__(
        self,
        sources: list[Source],
        collator: Collator,
        seed: int,
        global_batch: int,
        micro_batch: int,
        rank: int,
        world_size: int,
        prefetch_steps: int = 0,
        end_samples: int | None = None,
    ) -> None:
        if global_batch % (micro_batch * world_size):
            raise DataError(
                f"global batch {global_batch} not divisible by micro batch {micro_batch} "
                f"x world size {world_size}"
            )
        self.sources = sources
        self.collator = collator
        self.seed = seed
        self.order = MixedOrder(
            [s.samples.num_samples for s in sources],
            [s.weight for s in sources],
            source_seeds(seed, sources),
            derive_seed(seed, "mix"),
        )
        self.collate_seed = derive_seed(seed, "collate")
        self.global_batch = global_batch
        self.micro_batch = micro_batch
        self.rank = rank
        self.world_size = world_size
        self.prefetch_steps = prefetch_steps
        self.end_samples = end_samples
        """Where the run stops (max_steps x global batch), so prefetching fetches nothing past it."""
        self.remote = any(s.samples.shards.remote for s in sources)
        self.consumed_samples = 0
        self._prefetched_to = 0  # global position up to which this rank's data was asked for

    @property
    def per_rank(self) -> int:
        return self.global_batch // self.world_size

    def step_samples(self, step_start: int | None = None) -> tuple[int, list[tuple[int, int]]]:
        """This rank's first global position in the step starting at global position `step_start`
        (default: the next step), and its (source, sample id) pairs: what `next_step` reads,
        computed from the seed and the index alone."""
        if step_start is None:
            step_start = self.consumed_samples
        start = step_start + self.rank * self.per_rank
        return start, self.order.sample_ids(start, self.per_rank)

    def _prefetch(self) -> None:
        """Ask for the data of this step and the next `prefetch_steps` steps: it is fetched in
        parallel background threads, so a step normally finds its data local already."""
        ahead = self.consumed_samples + (self.prefetch_steps + 1) * self.global_batch
        if self.end_samples is not None:
            ahead = min(ahead, self.end_samples)
        step_start = max(self._prefetched_to, self.consumed_samples)
        while step_start < ahead:
            wanted: dict[int, list[int]] = {}
            for source, sample in self.step_samples(step_start)[1]:
                wanted.setdefault(source, []).append(sample)
            for source, samples in wanted.items():
                self.sources[source].samples.prefetch(samples)
            step_start += self.global_batch
        self._prefetched_to = ahead

    def next_step(self) -> list[Batch]:
        """This rank's contiguous slice of the next global batch, split into micro-batches."""
        if self.remote and self._prefetched_to <= self.consumed_samples:
            self._prefetch()  # the first step of a run or a resume: nothing asked for yet
        start, ids = self.step_samples()
        length = self.sources[0].samples.window.length
        micro_batches = []
        for first in range(0, self.per_rank, self.micro_batch):
            windows = np.empty((self.micro_batch, length), dtype=np.int64)
            for row, (source, sample) in enumerate(ids[first : first + self.micro_batch]):
                self.sources[source].samples.windows([sample], out=windows[row : row + 1])
            positions = list(range(start + first, start + first + self.micro_batch))
            micro_batches.append(self.collator(windows, sample_seeds(self.collate_seed, positions)))
        self.consumed_samples += self.global_batch
        if self.remote:
            # Asked for after this step's reads, so the fetches run while the step computes
            # rather than contending with the reads for the interpreter.
            self._prefetch()
        return micro_batches

    def source_samples(self) -> dict[str, int]:
        """Samples of each named source consumed so far (all ranks together); {} for one source."""
        if len(self.sources) == 1:
            return {}
        counts = self.order.positions(self.consumed_samples)
        return {s.name: n for s, n in zip(self.sources, counts)}

    def state(self) -> DataState:
        many = len(self.sources) > 1
        return DataState(
            seed=self.seed,
            consumed_samples=self.consumed_samples,
            epoch=max(self.order.epochs(self.consumed_samples)),
            fingerprint=mixture_fingerprint(self.sources),
            seq_len=self.sources[0].samples.seq_len,
            sources={s.name: s.samples.shards.fingerprint for s in self.sources} if many else {},
        )

    def load_state(self, state: dict) -> None:
        mine = asdict(self.state())
        for key in ("seed", "fingerprint", "seq_len"):
            if state[key] != mine[key]:
                detail = _which_source(state, mine) if key == "fingerprint" else ""
                raise DataError(
                    f"checkpoint data state {key}={state[key]!r} does not match this run's "
                    f"{key}={mine[key]!r}{detail}; "
                    "resume with the same dataset(s), data.sources weights, data.seq_len and "
                    "train.seed, or start a new run directory"
                )
        self.consumed_samples = int(state["consumed_samples"])


def _which_source(saved: dict, mine: dict) -> str:
    """What differs between two mixtures, for the fingerprint mismatch message."""
    before, now = saved.get("sources", {}), mine["sources"]
    if before.keys() != now.keys():
        return f" (sources were {sorted(before) or 'one unnamed'}, now {sorted(now) or 'one unnamed'})"
    changed = [name for name in now if before[name] != now[name]]
    return f" (data of source(s) {changed} changed)" if changed else " (source weights changed)"


def eval_batches(
    samples: PackedSamples,
    collator: Collator,
    seed: int,
    micro_batch: int,
    num_batches: int,
    rank: int,
    world_size: int,
) -> list[Batch]:
    """The same first validation windows every time, split across ranks (no shuffling); `seed`
    gives the collator the same per-sample seeds every time too."""
    total = min(samples.num_samples, micro_batch * num_batches * world_size)
    ids = list(range(total))[rank::world_size]
    return [
        collator(samples.windows(ids[i : i + micro_batch]), sample_seeds(seed, ids[i : i + micro_batch]))
        for i in range(0, len(ids), micro_batch)
    ]
