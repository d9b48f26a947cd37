"""Process work units in a pool: read, filter, tokenize and write each unit on its own.

Why whole units per worker (not batches shipped from a parent): the parent only hands out tiny
unit descriptions, so nothing but token ids of one unit ever sits in a worker's memory, no
document text crosses a process boundary, and throughput scales with workers until the disk or
network is the limit. A unit's record is written last, after all its shards, so a record on
storage means the unit is complete; a re-run verifies the listed checksums and reuses it.
"""

from __future__ import annotations

import itertools
import multiprocessing
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from data_prep import store
from data_prep.filters import DocumentFilter, FilterConfig, validation_mask
from data_prep.manifest import token_dtype
from data_prep.readers import ErrorPolicy, read_unit
from data_prep.tokenizer import Tokenizer, load_tokenizer
from data_prep.units import ReadOptions, WorkUnit
from data_prep.writer import SPLITS, UnitShardWriter, unit_dir
from dist_llm.uri import join

RECORD_FORMAT = "dist_llm.prep_unit/3"
"""Changes when shards change form (2: uint16/uint32 ids; 3: checks files for range reads), so an
earlier run's units are redone, never mixed into a dataset with the new ones."""
BATCH_DOCS = 256
BATCH_CHARS = 1 << 20


@dataclass(frozen=True)
class UnitJob:
    """Everything a worker needs besides the unit; small and picklable."""

    out: str
    identity: str  # sha of the prep identity; a record with another one is stale
    tokenizer_path: str  # a local file/dir
    read: ReadOptions
    filters: FilterConfig
    val_fraction: float
    shard_tokens: int
    add_bos: bool
    on_error: str


def record_uri(out: str, index: int) -> str:
    return join(out, unit_dir(index) + ".json")


def verified_record(job: UnitJob, index: int) -> dict | None:
    """The unit's record if it is complete, current and every file matches its checksum."""
    record = store.read_json(record_uri(job.out, index))
    if not record or record.get("format") != RECORD_FORMAT or record.get("identity") != job.identity:
        return None
    for block in record["splits"].values():
        for shard in block["shards"]:
            for path, sha256 in (
                ("path", "sha256"),
                ("checks", "checks_sha256"),
                ("hashes", "hashes_sha256"),
            ):
                if store.sha256(join(job.out, shard[path])) != shard[sha256]:
                    return None
    return record


class _UnitProcessor:
    """Per-process state: the tokenizer is loaded once, not once per unit."""

    def __init__(self, job: UnitJob) -> None:
        self.job = job
        self.tokenizer: Tokenizer = load_tokenizer(job.tokenizer_path)
        self.dtype = token_dtype(self.tokenizer.vocab_size)

    def __call__(self, unit: WorkUnit) -> dict:
        record = verified_record(self.job, unit.index)
        if record is not None:
            return record | {"reused": True}
        job = self.job
        policy = ErrorPolicy(job.on_error)
        doc_filter = DocumentFilter(job.filters)
        writers = {s: UnitShardWriter(job.out, unit.index, s, job.shard_tokens) for s in SPLITS}
        docs_read = 0
        batch: list[tuple[str, bytes]] = []
        chars = 0
        for doc in read_unit(unit, job.read, policy):
            docs_read += 1
            kept = doc_filter.text(doc.text)
            if kept is None:
                continue
            batch.append(kept)
            chars += len(kept[0])
            if len(batch) >= BATCH_DOCS or chars >= BATCH_CHARS:
                self._encode(batch, doc_filter, writers)
                batch, chars = [], 0
        if batch:
            self._encode(batch, doc_filter, writers)
        record = {
            "format": RECORD_FORMAT,
            "identity": job.identity,
            "unit": unit.index,
            "docs_read": docs_read,
            "splits": {split: writer.close() for split, writer in writers.items()},
            "removed": dict(sorted(doc_filter.removed.items())),
            "skipped": dict(sorted(policy.counts.items())),
        }
        # Last: marks the unit complete. Not fsynced: a resume verifies the files it lists.
        store.write_json(record_uri(job.out, unit.index), record, durable=False)
        return record | {"reused": False}

    def _encode(
        self, batch: list[tuple[str, bytes]], doc_filter: DocumentFilter, writers: dict[str, UnitShardWriter]
    ) -> None:
        encoded = self.tokenizer.encode_batch([text for text, _ in batch])
        kept = [i for i, ids in enumerate(encoded) if doc_filter.tokens(len(ids))]
        if not kept:
            return
        # One flat array per batch, EOS (and BOS) put in with numpy inserts.
        sizes = np.fromiter((len(encoded[i]) for i in kept), dtype=np.int64, count=len(kept))
        flat = np.fromiter(
            itertools.chain.from_iterable(encoded[i] for i in kept), dtype=self.dtype, count=int(sizes.sum())
        )
        ends = np.cumsum(sizes)
        flat = np.insert(flat, ends, self.tokenizer.eos_id)
        if self.job.add_bos:
            flat = np.insert(flat, ends - sizes + np.arange(len(kept)), self.tokenizer.bos_id)
        lengths = sizes + 1 + self.job.add_bos
        digests = [batch[i][1] for i in kept]
        validation = validation_mask(digests, self.job.val_fraction)
        if not validation.any():
            writers["train"].add(flat, lengths, digests)
            return
        per_token = np.repeat(validation, lengths)
        for split, docs, tokens in (
            ("train", ~validation, ~per_token),
            ("validation", validation, per_token),
        ):
            writers[split].add(flat[tokens], lengths[docs], [d for d, keep in zip(digests, docs) if keep])


_processor: _UnitProcessor | None = None


def _init_worker(job: UnitJob) -> None:
    global _processor
    _processor = _UnitProcessor(job)


def _process_in_worker(unit: WorkUnit) -> dict:
    assert _processor is not None, "pool initializer did not run"
    return _processor(unit)


def process_units(units: list[WorkUnit], job: UnitJob, workers: int) -> Iterator[dict]:
    """Yield each unit's record as it completes (any order); `workers == 1` runs in-process."""
    if workers <= 1 or len(units) <= 1:
        processor = _UnitProcessor(job)
        for unit in units:
            yield processor(unit)
        return
    with multiprocessing.Pool(min(workers, len(units)), initializer=_init_worker, initargs=(job,)) as pool:
        # chunksize 1: units are big, and handing them out one at a time balances the load.
        yield from pool.imap_unordered(_process_in_worker, units, chunksize=1)
