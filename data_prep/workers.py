"""Tokenize batches of documents in a process pool, in input order.

Why ordered and batched: the shards must be byte-identical for any `--workers`, so batches are
formed in the parent (independent of the worker count) and results are consumed in submission
order. Why not `Pool.imap`: its feeder thread drains the whole input iterator up front, which
would pull an entire large corpus into memory; a bounded window of `apply_async` calls keeps at
most a few batches per worker in flight.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from data_prep.tokenizer import Tokenizer, load_tokenizer

Tag = TypeVar("Tag")
IN_FLIGHT_PER_WORKER = 4


@dataclass(frozen=True)
class EncodedBatch:
    """Token ids of a batch of documents, flat: document i is tokens[offsets[i]:offsets[i+1]]."""

    tokens: np.ndarray  # int32, compact to send between processes
    offsets: np.ndarray  # int64, len(documents) + 1

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def document(self, index: int) -> np.ndarray:
        return self.tokens[self.offsets[index] : self.offsets[index + 1]]


class _Encoder:
    """Per-process state: the tokenizer is loaded once, not once per batch."""

    def __init__(self, tokenizer_path: str, add_bos: bool) -> None:
        self.tokenizer: Tokenizer = load_tokenizer(tokenizer_path)
        self.prefix = [self.tokenizer.bos_id] if add_bos else []
        self.suffix = [self.tokenizer.eos_id]

    def __call__(self, texts: list[str]) -> EncodedBatch:
        docs = [self.prefix + ids + self.suffix for ids in self.tokenizer.encode_batch(texts)]
        offsets = np.zeros(len(docs) + 1, dtype=np.int64)
        np.cumsum([len(d) for d in docs], out=offsets[1:])
        flat = [token for doc in docs for token in doc]
        return EncodedBatch(np.asarray(flat, dtype=np.int32), offsets)


_worker_encoder: _Encoder | None = None


def _init_worker(tokenizer_path: str, add_bos: bool) -> None:
    global _worker_encoder
    _worker_encoder = _Encoder(tokenizer_path, add_bos)


def _encode_in_worker(texts: list[str]) -> EncodedBatch:
    assert _worker_encoder is not None, "pool initializer did not run"
    return _worker_encoder(texts)


def encode_batches(
    batches: Iterable[tuple[Tag, list[str]]],
    tokenizer_path: str,
    workers: int,
    add_bos: bool = False,
) -> Iterator[tuple[Tag, EncodedBatch]]:
    """Yield `(tag, encoded)` per input `(tag, texts)`, in input order; EOS ends every document.

    `tag` is passed through untouched so callers can carry per-batch data (e.g. split flags)
    without relying on lockstep iteration. `workers == 1` runs in this process, no pool.
    """
    if workers <= 1:
        encoder = _Encoder(tokenizer_path, add_bos)
        for tag, texts in batches:
            yield tag, encoder(texts)
        return
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(tokenizer_path, add_bos)) as pool:
        pending: deque = deque()
        for tag, texts in batches:
            pending.append((tag, pool.apply_async(_encode_in_worker, (texts,))))
            if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                tag_done, result = pending.popleft()
                yield tag_done, result.get()
        while pending:
            tag_done, result = pending.popleft()
            yield tag_done, result.get()
