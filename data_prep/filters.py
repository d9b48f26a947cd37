"""Document filters and the per-document hash that drives dedup and the train/validation split.

Why one hash for both: the 128-bit blake2b digest of the (normalized) text decides the split
(its first 8 bytes as a fraction of 2**64) and identifies exact duplicates. Identical documents
therefore always land in the same split, so deduplicating each split on its own is the same as
deduplicating the corpus. The hash depends on the text alone: stable across runs, machines,
worker counts and Python hash seeds.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections import Counter
from dataclasses import dataclass

import numpy as np

from dist_llm.errors import DataError

NORMALIZATIONS = ("none", "NFC", "NFKC", "NFD", "NFKD")
DEDUP_MODES = ("exact", "none")
HASH_BYTES = 16
# Reasons a filter removes a document; the manifest reports a count for each.
REMOVED_REASONS = ("min_chars", "max_chars", "min_tokens", "max_tokens", "duplicate")


@dataclass(frozen=True)
class FilterConfig:
    """Which documents are kept; part of the prep identity (changing it changes the output)."""

    normalize: str = "none"  # Unicode normalization form applied before everything else
    dedup: str = "exact"  # exact: drop later copies of a document (first in corpus order wins)
    min_chars: int = 0  # drop documents shorter than this (0 = no minimum)
    max_chars: int = 0  # drop documents longer than this (0 = no maximum)
    min_tokens: int = 0  # drop documents with fewer tokens (EOS/BOS not counted; 0 = no minimum)
    max_tokens: int = 0  # drop documents with more tokens (0 = no maximum)

    def validate(self) -> None:
        if self.normalize not in NORMALIZATIONS:
            raise DataError(f"--normalize {self.normalize!r} is not one of {NORMALIZATIONS}")
        if self.dedup not in DEDUP_MODES:
            raise DataError(f"--dedup {self.dedup!r} is not one of {DEDUP_MODES}")
        for name in ("min_chars", "max_chars", "min_tokens", "max_tokens"):
            if getattr(self, name) < 0:
                raise DataError(f"--{name.replace('_', '-')} {getattr(self, name)} must be >= 0")
        for low, high in (("min_chars", "max_chars"), ("min_tokens", "max_tokens")):
            if getattr(self, high) and getattr(self, low) > getattr(self, high):
                raise DataError(
                    f"--{low.replace('_', '-')} {getattr(self, low)} is larger than "
                    f"--{high.replace('_', '-')} {getattr(self, high)}"
                )


def doc_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=HASH_BYTES).digest()


def is_validation(digest: bytes, val_fraction: float) -> bool:
    """Stable split decision from the document hash alone."""
    return val_fraction > 0 and int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def validation_mask(digests: list[bytes], val_fraction: float) -> np.ndarray:
    """`is_validation` of many hashes at once (one numpy pass instead of a Python call each)."""
    if val_fraction <= 0 or not digests:
        return np.zeros(len(digests), dtype=bool)
    leading = np.frombuffer(b"".join(digests), dtype=">u8")[:: HASH_BYTES // 8]
    return leading / 2.0**64 < val_fraction


class DocumentFilter:
    """Text-level filters plus within-unit dedup; counts every removal by reason.

    Dedup across units needs the whole corpus and happens at merge time (see merge.py); doing
    the within-unit part here saves tokenizing copies that sit close together.
    """

    def __init__(self, cfg: FilterConfig) -> None:
        self.cfg = cfg
        self.removed: Counter = Counter()
        self._seen: set[bytes] = set()

    def text(self, text: str) -> tuple[str, bytes] | None:
        """(normalized text, hash) of a kept document, or None if a filter removed it."""
        if self.cfg.normalize != "none":
            text = unicodedata.normalize(self.cfg.normalize, text)
        if len(text) < self.cfg.min_chars:
            self.removed["min_chars"] += 1
            return None
        if self.cfg.max_chars and len(text) > self.cfg.max_chars:
            self.removed["max_chars"] += 1
            return None
        digest = doc_hash(text)
        if self.cfg.dedup == "exact":
            if digest in self._seen:
                self.removed["duplicate"] += 1
                return None
            self._seen.add(digest)
        return text, digest

    def tokens(self, count: int) -> bool:
        """Whether a document with `count` tokens is kept (counts the removal if not)."""
        if count < self.cfg.min_tokens:
            self.removed["min_tokens"] += 1
            return False
        if self.cfg.max_tokens and count > self.cfg.max_tokens:
            self.removed["max_tokens"] += 1
            return False
        return True
