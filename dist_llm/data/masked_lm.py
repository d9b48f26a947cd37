"""BERT's masked-LM objective, optionally with next-sentence (NSP) or sentence-order (SOP) prediction.

    sentence_task none:     [CLS] w1 w2 ... wn [SEP]                 token types 0 ... 0
    sentence_task nsp/sop:  [CLS] a1 .. ak [SEP] b1 .. bm [SEP]      token types 0 .. 0 | 1 .. 1

A raw window of the packed token stream fills the slots between the structural tokens, so every
sample is exactly `seq_len` tokens with no padding (the attention mask is all ones). With a
sentence task the window is cut at a random point into A and B, and with probability 1/2:
- nsp (BERT, Devlin et al. 2019): B is replaced by the same span of another row of the micro-batch,
  label 1 ("random"); otherwise label 0 ("is next"), HF's `next_sentence_label` convention;
- sop (ALBERT, Lan et al. 2020): A and B swap places, label 1 ("swapped"); otherwise 0.

Masking follows BERT: a fixed share (`mask_prob`, rounded per row, at least one) of the
non-structural positions is chosen for prediction; of those 80% become the mask token, 10% a random
ordinary token and 10% stay unchanged. `labels` hold the original token there and -100 elsewhere.
[CLS] and [SEP] are never chosen. EOS tokens inside a window (the packed stream's document
separators) are ordinary tokens that may be chosen: predicting where a document ends is a fair
task, and skipping them would make the per-row mask count depend on the document layout.

Every random choice of a row comes from `np.random.default_rng(its seed)` alone, so a sample is the
same on any world size and after a resume. The one exception is what an NSP negative's B contains:
it is another row's span, so it depends on which rows share the micro-batch (the choice to replace,
the split point and the partner's index are the row's own). A one-row micro-batch has no other row
and gives only positives.
"""

from __future__ import annotations

import numpy as np
import torch

from dist_llm.data.batch import Batch, Window, require_token_ids
from dist_llm.errors import ConfigError, DataError

REQUIRED_KEYS = ("vocab_size", "mask_id", "cls_id", "sep_id")
SPECIAL_KEYS = ("pad_id", "unk_id", "bos_id", "eos_id", "mask_id", "sep_id", "cls_id")
SENTENCE_TASKS = ("none", "nsp", "sop")
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1
"""Of the chosen positions: 80% mask token, 10% random token, the remaining 10% unchanged."""


class MaskedLMCollator:
    """Model inputs for `EncoderLM`: `input_ids`, `token_type_ids`, `attention_mask`, `labels`,
    and `next_sentence_label` when a sentence task is on (all int64)."""

    def __init__(self, tokens: dict, mask_prob: float = 0.15, sentence_task: str = "none") -> None:
        require_token_ids(tokens, REQUIRED_KEYS, "masked LM needs (the <mask>, <cls> and <sep> ids)")
        if not 0.0 < mask_prob < 1.0:
            raise ConfigError(f"data.mask_prob={mask_prob} must be in (0, 1)")
        if sentence_task not in SENTENCE_TASKS:
            raise ConfigError(
                f"data.sentence_task={sentence_task!r} is unknown; choose one of {list(SENTENCE_TASKS)}"
            )
        self.vocab_size = int(tokens["vocab_size"])
        self.mask_id, self.cls_id, self.sep_id = (int(tokens[k]) for k in ("mask_id", "cls_id", "sep_id"))
        self.mask_prob = mask_prob
        self.sentence_task = sentence_task
        # Random replacements come from the ordinary tokens only: the special ids (0..38 in our
        # tokenizers, sentinels included) sit at the start of the vocabulary.
        specials = [int(tokens[k]) for k in SPECIAL_KEYS if tokens.get(k) is not None]
        specials += [int(i) for i in tokens.get("sentinel_ids") or []]
        self.first_ordinary = max(specials) + 1
        if self.first_ordinary >= self.vocab_size:
            raise DataError(
                f"dataset manifest: tokenizer vocab_size={self.vocab_size} has no ordinary "
                f"token after the special ids (up to {self.first_ordinary - 1}); re-run "
                "`dist-llm prep` with a larger vocabulary"
            )

    @property
    def structural(self) -> int:
        """[CLS]/[SEP] tokens a sample adds around its raw tokens."""
        return 2 if self.sentence_task == "none" else 3

    def window(self, seq_len: int) -> Window:
        raw = seq_len - self.structural
        if raw < self.structural - 1:  # one raw token, or one per sentence
            raise ConfigError(
                f"data.seq_len={seq_len} is too short for masked LM with data.sentence_task="
                f"{self.sentence_task!r}; it needs >= {2 * self.structural - 1}"
            )
        return Window(stride=raw, length=raw)  # windows do not overlap: no token is seen twice

    def layout(
        self, windows: np.ndarray, row: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
        """(input ids, token types, sentence label, positions of [CLS]/[SEP]) of one row before
        masking. Draws the same numbers whatever the batch size, so the masking draws after it
        depend on the row's seed alone."""
        raw = windows[row]
        n = len(raw)
        if self.sentence_task == "none":
            ids = np.concatenate(([self.cls_id], raw, [self.sep_id]))
            return ids, np.zeros(n + 2, dtype=np.int64), 0, np.array([0, n + 1])
        split = int(rng.integers(1, n))  # A = raw[:split], B = raw[split:], both non-empty
        flip = bool(rng.random() < 0.5)
        pick = rng.random()  # which other row an NSP negative borrows B from
        first, second = raw[:split], raw[split:]
        if flip and self.sentence_task == "nsp" and len(windows) > 1:
            partner = int(pick * (len(windows) - 1))
            partner += partner >= row  # any row but this one
            second = windows[partner, split:]
        elif flip and self.sentence_task == "sop":
            first, second = second, first
        else:
            flip = False  # nsp in a one-row batch: no other row to draw B from
        ids = np.concatenate(([self.cls_id], first, [self.sep_id], second, [self.sep_id]))
        types = np.concatenate(
            (np.zeros(len(first) + 2, dtype=np.int64), np.ones(len(second) + 1, dtype=np.int64))
        )
        return ids, types, int(flip), np.array([0, len(first) + 1, n + 2])

    def mask(
        self, ids: np.ndarray, structural: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """(masked input ids, labels) of one laid-out row; `structural` positions are never chosen
        (a raw token that happens to equal the [SEP] id still may be)."""
        candidates = np.delete(np.arange(len(ids)), structural)
        count = max(1, int(round(self.mask_prob * len(candidates))))
        chosen = rng.choice(candidates, size=count, replace=False)
        draw = rng.random(count)  # decides mask / random / keep for each chosen position
        random_ids = rng.integers(self.first_ordinary, self.vocab_size, size=count)
        labels = np.full(len(ids), -100, dtype=np.int64)
        labels[chosen] = ids[chosen]
        masked = ids.copy()
        masked[chosen] = np.where(
            draw < MASK_SHARE,
            self.mask_id,
            np.where(draw < MASK_SHARE + RANDOM_SHARE, random_ids, ids[chosen]),
        )
        return masked, labels

    def __call__(self, windows: np.ndarray, seeds: list[int]) -> Batch:
        windows = np.asarray(windows, dtype=np.int64)
        # The raw length alone fixes the shape, so this needs no state from window().
        seq_len = windows.shape[1] + self.structural
        rows = len(windows)
        inputs = np.empty((rows, seq_len), dtype=np.int64)
        types = np.empty((rows, seq_len), dtype=np.int64)
        labels = np.empty((rows, seq_len), dtype=np.int64)
        sentence = np.empty(rows, dtype=np.int64)
        for row, seed in enumerate(seeds):
            rng = np.random.default_rng(seed)
            ids, types[row], sentence[row], structural = self.layout(windows, row, rng)
            inputs[row], labels[row] = self.mask(ids, structural, rng)
        batch = {
            "input_ids": torch.from_numpy(inputs),
            "token_type_ids": torch.from_numpy(types),
            "attention_mask": torch.ones((rows, seq_len), dtype=torch.long),
            "labels": torch.from_numpy(labels),
        }
        if self.sentence_task != "none":
            batch["next_sentence_label"] = torch.from_numpy(sentence)
        return batch
