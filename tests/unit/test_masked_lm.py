"""BERT masked LM collation: the 15% / 80-10-10 masking, the [CLS] A [SEP] B [SEP] layout of the
sentence tasks and their labels, determinism by seed, and errors naming what is missing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dist_llm.data.batch import Window
from dist_llm.data.masked_lm import MaskedLMCollator
from dist_llm.errors import ConfigError, DataError

MASK, SEP, CLS = 4, 5, 6
TOKENS = {
    "vocab_size": 1000,
    "pad_id": 0,
    "unk_id": 1,
    "bos_id": 2,
    "eos_id": 3,
    "mask_id": MASK,
    "sep_id": SEP,
    "cls_id": CLS,
    "sentinel_ids": list(range(7, 39)),
}
FIRST_ORDINARY = 39


def raw_windows(rows: int, length: int, seed: int = 0) -> np.ndarray:
    """Ordinary token ids (>= 100), so a special id in the output can only come from the collator."""
    return np.random.default_rng(seed).integers(100, 1000, size=(rows, length), dtype=np.int64)


def collate(
    task: str = "none", rows: int = 8, seq_len: int = 64, seed: int = 0, **kwargs
) -> tuple[dict, np.ndarray]:
    collator = MaskedLMCollator(TOKENS, sentence_task=task, **kwargs)
    window = collator.window(seq_len)
    windows = raw_windows(rows, window.length, seed)
    return collator(windows, list(range(seed * 1000, seed * 1000 + rows))), windows


def test_window_leaves_room_for_structural_tokens():
    assert MaskedLMCollator(TOKENS).window(128) == Window(stride=126, length=126)
    assert MaskedLMCollator(TOKENS, sentence_task="nsp").window(128) == Window(stride=125, length=125)
    with pytest.raises(ConfigError, match="data.seq_len=4"):
        MaskedLMCollator(TOKENS, sentence_task="sop").window(4)


def test_masking_rate_and_80_10_10_split():
    batch, windows = collate(rows=256, seq_len=130)
    inputs, labels = batch["input_ids"].numpy(), batch["labels"].numpy()
    assert inputs.shape == labels.shape == (256, 130)
    assert all(v.dtype == torch.int64 for v in batch.values())
    chosen = labels != -100
    # A fixed count per row: round(15% of the 128 maskable positions) = 19.
    assert (chosen.sum(axis=1) == 19).all()
    originals = windows  # none layout: raw tokens sit at positions 1..n
    assert (labels[:, 1:-1][chosen[:, 1:-1]] == originals[chosen[:, 1:-1]]).all()
    assert (inputs[~chosen] != MASK).all() and (labels[:, [0, -1]] == -100).all()
    picked, label = inputs[chosen], labels[chosen]
    masked = (picked == MASK).mean()
    kept = (picked == label).mean()
    replaced = 1 - masked - kept
    # 4864 predictions: the binomial std of a 10% share is ~0.4%, of the 80% one ~0.6%.
    assert abs(masked - 0.8) < 0.03 and abs(kept - 0.1) < 0.02 and abs(replaced - 0.1) < 0.02, (masked, kept)
    randoms = picked[(picked != MASK) & (picked != label)]
    assert randoms.min() >= FIRST_ORDINARY and randoms.max() < TOKENS["vocab_size"]


def test_unmasked_positions_are_the_layout():
    batch, windows = collate(seq_len=32)
    inputs, labels = batch["input_ids"], batch["labels"]
    assert (inputs[:, 0] == CLS).all() and (inputs[:, -1] == SEP).all()
    restored = torch.where(labels == -100, inputs, labels)  # undo the masking
    assert torch.equal(restored[:, 1:-1], torch.from_numpy(windows))
    assert (batch["token_type_ids"] == 0).all() and (batch["attention_mask"] == 1).all()
    assert "next_sentence_label" not in batch


@pytest.mark.parametrize("task", ["none", "nsp", "sop"])
def test_same_seeds_same_batch_other_seeds_differ(task):
    first, _ = collate(task, seed=1)
    again, _ = collate(task, seed=1)
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    collator = MaskedLMCollator(TOKENS, sentence_task=task)
    windows = raw_windows(8, collator.window(64).length, seed=1)
    other = collator(windows, list(range(500, 508)))
    assert not torch.equal(first["labels"], other["labels"])


def test_a_row_depends_on_its_own_seed_only():
    """A row masks the same way in any batch (world-size independence); sop has no cross-row part."""
    collator = MaskedLMCollator(TOKENS, sentence_task="sop")
    windows = raw_windows(4, collator.window(48).length)
    full = collator(windows, [10, 11, 12, 13])
    alone = collator(windows[2:3], [12])
    assert all(torch.equal(full[k][2], alone[k][0]) for k in full)


def layout(batch: dict, row: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(restored input, segment A, segment B) of one row of a sentence-task batch."""
    restored = torch.where(batch["labels"][row] == -100, batch["input_ids"][row], batch["labels"][row])
    seps = torch.nonzero(restored == SEP).flatten().tolist()
    assert restored[0] == CLS and seps[-1] == len(restored) - 1
    middle = [s for s in seps[:-1] if batch["token_type_ids"][row, s + 1] == 1]
    assert len(middle) == 1, "one [SEP] between the segments, where token types switch to 1"
    a, b = restored[1 : middle[0]], restored[middle[0] + 1 : -1]
    types = batch["token_type_ids"][row]
    assert (types[: middle[0] + 1] == 0).all() and (types[middle[0] + 1 :] == 1).all()
    return restored, a, b


def test_nsp_layout_and_labels():
    batch, windows = collate("nsp", rows=64, seq_len=40)
    labels = batch["next_sentence_label"]
    assert 20 < labels.sum() < 44  # p = 1/2 over 64 rows
    for row in range(64):
        _, a, b = layout(batch, row)
        raw = torch.from_numpy(windows[row])
        assert len(a) >= 1 and len(b) >= 1 and len(a) + len(b) == len(raw)
        assert torch.equal(a, raw[: len(a)])
        if labels[row] == 0:
            assert torch.equal(b, raw[len(a) :])
        else:  # the same span of another row
            others = [torch.from_numpy(windows[j, len(a) :]) for j in range(64) if j != row]
            assert any(torch.equal(b, other) for other in others)


def test_nsp_one_row_batch_has_only_positives():
    collator = MaskedLMCollator(TOKENS, sentence_task="nsp")
    windows = raw_windows(1, collator.window(32).length)
    assert all(collator(windows, [seed])["next_sentence_label"].item() == 0 for seed in range(20))


def test_sop_layout_and_labels():
    batch, windows = collate("sop", rows=64, seq_len=40)
    labels = batch["next_sentence_label"]
    assert 20 < labels.sum() < 44
    for row in range(64):
        _, a, b = layout(batch, row)
        raw = torch.from_numpy(windows[row])
        joined = torch.cat((b, a)) if labels[row] == 1 else torch.cat((a, b))
        assert torch.equal(joined, raw)


def test_structural_tokens_never_masked_even_with_look_alike_raw_tokens():
    collator = MaskedLMCollator(TOKENS, mask_prob=0.5, sentence_task="nsp")
    windows = np.full((16, collator.window(24).length), SEP, dtype=np.int64)  # raw tokens equal [SEP]
    batch = collator(windows, list(range(16)))
    for row in range(16):
        types = batch["token_type_ids"][row]
        middle = int(torch.nonzero(types).min()) - 1
        assert (batch["labels"][row, [0, middle, -1]] == -100).all()
        assert batch["input_ids"][row, 0] == CLS
    assert (batch["labels"] == SEP).any(), "raw [SEP]-valued tokens are ordinary, so maskable"


@pytest.mark.parametrize("key", ["mask_id", "cls_id", "sep_id"])
def test_missing_special_id_names_the_key_and_the_fix(key):
    with pytest.raises(DataError, match=rf"{key}.*re-run `dist-llm prep`"):
        MaskedLMCollator({**TOKENS, key: None})
    without = {k: v for k, v in TOKENS.items() if k != key}
    with pytest.raises(DataError, match=key):
        MaskedLMCollator(without)


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="data.mask_prob=1.5"):
        MaskedLMCollator(TOKENS, mask_prob=1.5)
    with pytest.raises(ConfigError, match="data.sentence_task='next'"):
        MaskedLMCollator(TOKENS, sentence_task="next")


def test_random_tokens_skip_special_ids_without_sentinels():
    tokens = {k: v for k, v in TOKENS.items() if k != "sentinel_ids"}
    assert MaskedLMCollator(tokens).first_ordinary == CLS + 1
    assert MaskedLMCollator(TOKENS).first_ordinary == FIRST_ORDINARY
