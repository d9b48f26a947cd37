"""T5 span corruption: fixed input/label lengths, the noise rate, lossless reconstruction of the raw
window, determinism by seed, and errors naming what is missing."""

from __future__ import annotations

import numpy as np
import pytest

from dist_llm.data.batch import Window
from dist_llm.data.span_corruption import SpanCorruptionCollator, span_lengths
from dist_llm.errors import ConfigError, DataError

SENTINELS = list(range(7, 39))  # <extra_id_0..31> in our tokenizers
TOKENS = {"vocab_size": 1000, "pad_id": 0, "eos_id": 3, "sentinel_ids": SENTINELS}


def raw_windows(rows: int, length: int, seed: int = 0) -> np.ndarray:
    """Token ids that are never special (>= 100), so sentinels and EOS are unambiguous."""
    return np.random.default_rng(seed).integers(100, 1000, size=(rows, length), dtype=np.int64)


def reconstruct(inputs: np.ndarray, labels: np.ndarray) -> list[int]:
    """Put each label span back where its sentinel sits in the input."""
    assert inputs[-1] == labels[-1] == TOKENS["eos_id"]
    spans, current = {}, None
    for token in labels[:-1].tolist():
        if token in SENTINELS:
            current = spans.setdefault(token, [])
        else:
            current.append(token)
    out = []
    for token in inputs[:-1].tolist():
        out.extend(spans.pop(token) if token in SENTINELS else [token])
    assert not spans, "every label span has a sentinel in the input"
    return out


def test_t5_paper_lengths():
    # T5's random_spans_helper for inputs_length 512 at 15% / 3: 568 raw tokens, 114 targets.
    lengths = span_lengths(512, 0.15, 3.0)
    assert (lengths.raw, lengths.noise, lengths.spans, lengths.targets) == (568, 85, 28, 114)


@pytest.mark.parametrize("seq_len", [8, 17, 64, 100, 128])
def test_exact_lengths_and_lossless_reconstruction(seq_len):
    collator = SpanCorruptionCollator(TOKENS)
    window = collator.window(seq_len)
    lengths = collator.lengths(seq_len)
    assert window == Window(stride=lengths.raw, length=lengths.raw) and lengths.inputs == seq_len
    # The largest raw length: one more token would not fit in seq_len.
    assert span_lengths(seq_len + 1, 0.15, 3.0).raw > lengths.raw
    raw = raw_windows(6, window.length)
    batch = collator(raw, list(range(6)))
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    assert batch["input_ids"].shape == (6, seq_len) and batch["labels"].shape == (6, lengths.targets)
    assert batch["attention_mask"].eq(1).all()
    for row in range(6):
        inputs, labels = batch["input_ids"][row].numpy(), batch["labels"][row].numpy()
        assert reconstruct(inputs, labels) == raw[row].tolist()
        used = [t for t in labels.tolist() if t in SENTINELS]
        assert used == SENTINELS[: lengths.spans]  # <extra_id_0> first, one per span, in order


def test_noise_fraction_and_span_lengths_follow_the_settings():
    collator = SpanCorruptionCollator(TOKENS, noise_density=0.3, mean_span_length=5.0)
    lengths = collator.lengths(256)
    assert abs(lengths.noise / lengths.raw - 0.3) < 0.01
    assert abs(lengths.noise / lengths.spans - 5.0) < 0.5
    batch = collator(raw_windows(20, lengths.raw), list(range(20)))
    span_sizes = []
    for labels in batch["labels"].numpy():
        cuts = np.flatnonzero(np.isin(labels, SENTINELS).astype(int)).tolist() + [len(labels) - 1]
        span_sizes += [b - a - 1 for a, b in zip(cuts, cuts[1:])]
    assert min(span_sizes) >= 1 and abs(np.mean(span_sizes) - lengths.noise / lengths.spans) < 1e-9
    assert len(set(span_sizes)) > 3  # span lengths are random, not all equal


def test_deterministic_by_seed_and_independent_of_batch_position():
    collator = SpanCorruptionCollator(TOKENS)
    raw = raw_windows(3, collator.window(64).length)
    first = collator(raw, [11, 12, 13])
    again = collator(raw, [11, 12, 13])
    assert all((first[k] == again[k]).all() for k in first)
    alone = collator(raw[1:2], [12])  # same sample, same seed, other batch -> same corruption
    assert (alone["input_ids"][0] == first["input_ids"][1]).all()
    other = collator(raw, [21, 12, 13])
    assert not (other["input_ids"][0] == first["input_ids"][0]).all()


@pytest.mark.parametrize(
    "tokens, message",
    [
        ({k: v for k, v in TOKENS.items() if k != "sentinel_ids"}, "sentinel_ids"),
        ({**TOKENS, "sentinel_ids": []}, "sentinel_ids is empty"),
        ({k: v for k, v in TOKENS.items() if k != "eos_id"}, "eos_id"),
    ],
)
def test_missing_tokenizer_entries_are_data_errors(tokens, message):
    with pytest.raises(DataError, match=message) as info:
        SpanCorruptionCollator(tokens)
    assert "dist-llm prep" in str(info.value)


def test_too_few_sentinels_and_bad_settings():
    collator = SpanCorruptionCollator({**TOKENS, "sentinel_ids": SENTINELS[:4]})
    collator.window(64)  # 3 spans fit
    with pytest.raises(DataError, match="data.seq_len=128 .* needs 7 spans .* only 4 sentinels"):
        collator.window(128)
    with pytest.raises(ConfigError, match="data.noise_density=1.5"):
        SpanCorruptionCollator(TOKENS, noise_density=1.5)
    with pytest.raises(ConfigError, match="data.mean_span_length=0.5"):
        SpanCorruptionCollator(TOKENS, mean_span_length=0.5)
