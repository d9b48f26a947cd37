"""T5's span-corruption objective: drop random spans of a raw window, mark each gap in the encoder
input with a sentinel, and have the decoder write the dropped spans back after their sentinels.

    raw:     The  cute  dog  walks  in  the  park
    input:   The  <extra_id_0>  walks  in  <extra_id_1>  park  </s>   (sentinels mark the gaps)
    labels:  <extra_id_0>  cute  dog  <extra_id_1>  the  </s>

The raw window is longer than the encoder input (the dropped tokens move to the labels), so the
collator asks the loader for `n` raw tokens with `n` the largest length whose corrupted input is
exactly `seq_len` tokens; every sample then has the same input and label lengths and no padding.
Noise is 15% of the tokens in spans of mean length 3 by default, as in the T5 paper (Raffel et al.
2020, sec. 3.7). Which tokens are noise follows T5's `random_spans_noise_mask`: the noise and the
non-noise tokens are each cut into `spans` random non-empty segments, interleaved starting with
non-noise. The row's seed alone decides the cut, so a sample is corrupted the same way on any
world size and after a resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dist_llm.data.batch import Batch, Window, require_token_ids
from dist_llm.errors import ConfigError, DataError

REQUIRED_KEYS = ("vocab_size", "pad_id", "eos_id", "sentinel_ids")


@dataclass(frozen=True)
class SpanLengths:
    """The fixed shape of one corrupted sample for an encoder length of `inputs` tokens."""

    raw: int
    """Raw window tokens consumed per sample."""
    noise: int
    """Tokens dropped from the input (moved to the labels)."""
    spans: int
    """Dropped spans, each replaced by one sentinel."""

    @property
    def inputs(self) -> int:
        """Encoder length: kept tokens, one sentinel per span, EOS."""
        return self.raw - self.noise + self.spans + 1

    @property
    def targets(self) -> int:
        """Decoder length: one sentinel per span, the dropped tokens, EOS."""
        return self.spans + self.noise + 1


def _lengths_for_raw(raw: int, noise_density: float, mean_span_length: float) -> SpanLengths:
    # Clamped as T5's random_spans_noise_mask clamps them: at least one noise token and one span,
    # at least one kept token.
    noise = min(max(round(raw * noise_density), 1), raw - 1)
    return SpanLengths(raw=raw, noise=noise, spans=max(1, round(noise / mean_span_length)))


def span_lengths(seq_len: int, noise_density: float, mean_span_length: float) -> SpanLengths:
    """The longest raw window whose corrupted input is exactly `seq_len` tokens (T5's
    `random_spans_helper`). Growing the raw window by one token grows the input by at most one
    (a kept token, or a new span's sentinel), so the longest fitting window fits exactly."""
    if seq_len < 4:
        raise ConfigError(
            f"data.seq_len={seq_len} is too short for span corruption (needs >= 4: a kept "
            "token, a sentinel, EOS, and one dropped token)"
        )
    raw = 2
    while _lengths_for_raw(raw + 1, noise_density, mean_span_length).inputs <= seq_len:
        raw += 1
    lengths = _lengths_for_raw(raw, noise_density, mean_span_length)
    assert lengths.inputs == seq_len, (seq_len, lengths)
    return lengths


def random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths of `num_segments` non-empty segments summing to `num_items`, uniformly over all such
    splits: choose `num_segments - 1` distinct cut points among the `num_items - 1` gaps."""
    cuts = np.sort(rng.choice(num_items - 1, size=num_segments - 1, replace=False)) + 1
    return np.diff(np.concatenate(([0], cuts, [num_items])))


def noise_mask(lengths: SpanLengths, rng: np.random.Generator) -> np.ndarray:
    """Boolean [raw] mask of the dropped tokens: kept/dropped segments alternate, kept first, so
    every sample ends in a dropped span."""
    noise = random_segmentation(lengths.noise, lengths.spans, rng)
    kept = random_segmentation(lengths.raw - lengths.noise, lengths.spans, rng)
    segments = np.stack([kept, noise], axis=1).reshape(-1)  # kept_0, noise_0, kept_1, noise_1, ...
    return np.repeat(np.tile([False, True], lengths.spans), segments)


class SpanCorruptionCollator:
    """Encoder `input_ids` [B, seq_len], decoder `labels` [B, targets] (the model shifts them right
    into its decoder inputs) and an all-ones `attention_mask`."""

    def __init__(self, tokens: dict, noise_density: float = 0.15, mean_span_length: float = 3.0) -> None:
        require_token_ids(tokens, REQUIRED_KEYS, "span corruption needs (the sentinel <extra_id_N> ids)")
        if not 0.0 < noise_density < 1.0:
            raise ConfigError(f"data.noise_density={noise_density} must be in (0, 1)")
        if mean_span_length < 1.0:
            raise ConfigError(f"data.mean_span_length={mean_span_length} must be >= 1")
        self.eos_id = int(tokens["eos_id"])
        self.sentinels = np.asarray(tokens["sentinel_ids"], dtype=np.int64)
        if len(self.sentinels) == 0:
            raise DataError(
                "dataset manifest: tokenizer.sentinel_ids is empty (the tokenizer has no "
                "<extra_id_0>); re-run `dist-llm prep` with a tokenizer that has sentinel tokens"
            )
        self.noise_density = noise_density
        self.mean_span_length = mean_span_length

    def lengths(self, seq_len: int) -> SpanLengths:
        """The sample shape for an encoder length of `seq_len` (`.targets` is the decoder length,
        which FLOPs accounting needs); DataError if it needs more spans than the tokenizer has sentinels."""
        lengths = span_lengths(seq_len, self.noise_density, self.mean_span_length)
        return self._check_sentinels(lengths, seq_len)

    def _check_sentinels(self, lengths: SpanLengths, seq_len: int) -> SpanLengths:
        if lengths.spans > len(self.sentinels):
            raise DataError(
                f"data.seq_len={seq_len} with data.noise_density={self.noise_density} and "
                f"data.mean_span_length={self.mean_span_length} needs {lengths.spans} spans per sample but "
                f"the tokenizer has only {len(self.sentinels)} sentinels; lower data.seq_len or "
                "data.noise_density, raise data.mean_span_length, or prep with more <extra_id_N> tokens"
            )
        return lengths

    def window(self, seq_len: int) -> Window:
        raw = self.lengths(seq_len).raw
        return Window(stride=raw, length=raw)  # windows do not overlap: no token is seen twice

    def corrupt(self, window: np.ndarray, lengths: SpanLengths, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(encoder input, labels) of one raw window [raw]."""
        mask = noise_mask(lengths, np.random.default_rng(seed))
        starts = mask & ~np.concatenate(([False], mask[:-1]))  # first token of each dropped span
        span_sentinel = self.sentinels[np.cumsum(starts) - 1]  # read only where a span has started
        eos = [self.eos_id]
        # Input: kept tokens, with each dropped span collapsed to its sentinel.
        inputs = np.where(starts, span_sentinel, window)[~mask | starts]
        # Labels: the dropped tokens, each span preceded by its sentinel.
        labels = np.insert(window[mask], np.flatnonzero(starts[mask]), self.sentinels[: lengths.spans])
        return np.concatenate((inputs, eos)), np.concatenate((labels, eos))

    def __call__(self, windows: np.ndarray, seeds: list[int]) -> Batch:
        # The raw length alone fixes the shape, so this needs no state from window().
        lengths = _lengths_for_raw(windows.shape[1], self.noise_density, self.mean_span_length)
        self._check_sentinels(lengths, lengths.inputs)
        inputs = np.empty((len(windows), lengths.inputs), dtype=np.int64)
        labels = np.empty((len(windows), lengths.targets), dtype=np.int64)
        for row, (window, seed) in enumerate(zip(windows, seeds)):
            inputs[row], labels[row] = self.corrupt(window, lengths, seed)
        return {
            "input_ids": torch.from_numpy(inputs),
            "labels": torch.from_numpy(labels),
            "attention_mask": torch.ones(inputs.shape, dtype=torch.long),
        }
