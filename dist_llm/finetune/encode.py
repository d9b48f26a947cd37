"""Examples -> token ids and label ids, framed the way each model family saw text in pretraining,
truncated to max_length, and padded into batches.

Framing (the special tokens around the text) by family:
- decoder:          <eos> A [<sep>|<eos> B] <eos>. Pretraining streams separate documents with EOS,
                    so a text starts after one; the closing EOS is the last real token, the one a
                    causal model has read everything by, and the sequence head pools it.
- encoder (BERT):   [CLS] A [SEP] [B [SEP]], token type 1 on B's part, as BERT was pretrained.
- encoder_decoder:  A </s> [B </s>], as T5's tokenizer frames inputs.
A token that the tokenizer lacks is left out of the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from data_prep.tokenizer import Tokenizer
from dist_llm.finetune.data import Example, SeqExample, TokenExample
from dist_llm.log import get_logger

IGNORE = -100
"""Label of positions the loss and metrics skip (specials, padding, a word's later subwords)."""

log = get_logger("finetune.encode")


@dataclass(frozen=True)
class Framing:
    start: list[int]
    """Before the first text."""
    middle: list[int]
    """Between the two texts of a pair."""
    end: list[int]
    """After the last text."""

    @property
    def single(self) -> int:
        """Special tokens around a single text."""
        return len(self.start) + len(self.end)


def framing(arch: str, tokenizer: Tokenizer) -> Framing:
    def ids(*candidates: int | None) -> list[int]:
        first = next((c for c in candidates if c is not None), None)
        return [] if first is None else [first]

    # An HF directory converted from our sentencepiece model may not declare cls/sep tokens, but it
    # still holds our "<cls>"/"<sep>" pieces under their names.
    cls = ids(tokenizer.cls_id, tokenizer.token_to_id("<cls>"))
    sep = ids(tokenizer.sep_id, tokenizer.token_to_id("<sep>"))
    if arch == "encoder":
        return Framing(cls, sep, sep)
    if arch == "encoder_decoder":
        return Framing([], ids(tokenizer.eos_id), ids(tokenizer.eos_id))
    return Framing(ids(tokenizer.eos_id), sep or ids(tokenizer.eos_id), ids(tokenizer.eos_id))


def pad_id(tokenizer: Tokenizer) -> int:
    """Padding is never attended to (or, for the causal decoder, comes after every real token), so
    any valid id works where a tokenizer has no pad token."""
    for candidate in (tokenizer.pad_id, tokenizer.eos_id):
        if candidate is not None:
            return candidate
    return 0


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    token_type_ids: list[int]
    labels: list[int]
    """seq: [class id]; token: one per position, IGNORE where not scored."""


def _truncate_pair(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Longest first: shorten whichever text is longer, so a short premise survives a long hypothesis."""
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        (a if len(a) > len(b) else b).pop()
    return a, b


def _encode_seq(
    examples: list[SeqExample],
    tokenizer: Tokenizer,
    frame: Framing,
    label_ids: dict[str, int],
    max_length: int,
) -> tuple[list[Encoded], int]:
    firsts = tokenizer.encode_batch([e.text for e in examples])
    pairs = [e.pair for e in examples if e.pair is not None]
    seconds = iter(tokenizer.encode_batch(pairs) if pairs else [])
    out, truncated = [], 0
    for example, a in zip(examples, firsts):
        if example.pair is None:
            budget = max_length - frame.single
            truncated += len(a) > budget
            ids = frame.start + a[:budget] + frame.end
            types = [0] * len(ids)
        else:
            b = next(seconds)
            budget = max_length - frame.single - len(frame.middle)
            truncated += len(a) + len(b) > budget
            a, b = _truncate_pair(a, b, budget)
            head = frame.start + a + frame.middle
            ids, types = head + b + frame.end, [0] * len(head) + [1] * (len(b) + len(frame.end))
        out.append(Encoded(ids, types, [label_ids[example.label]]))
    return out, truncated


def _encode_tokens(
    examples: list[TokenExample],
    tokenizer: Tokenizer,
    frame: Framing,
    label_ids: dict[str, int],
    max_length: int,
) -> tuple[list[Encoded], int]:
    """Each word is tokenized on its own (sentencepiece marks it as word-initial either way); its first
    subword carries the tag and the rest are IGNORE, as Hugging Face token classification does.
    Words that do not fit in max_length are dropped with their tags."""
    pieces = iter(tokenizer.encode_batch([w for e in examples for w in e.words]))
    out, truncated = [], 0
    for example in examples:
        ids, labels = list(frame.start), [IGNORE] * len(frame.start)
        room = max_length - frame.single
        for tag in example.tags:
            word = next(pieces)
            if not word:
                continue  # a word the tokenizer maps to nothing has no position to tag
            kept = word[:room]  # a word cut in its middle keeps its tag on the first subword
            if not kept:
                truncated += 1
                continue
            ids += kept
            labels += [label_ids[tag]] + [IGNORE] * (len(kept) - 1)
            room -= len(kept)
        ids += frame.end
        labels += [IGNORE] * len(frame.end)
        out.append(Encoded(ids, [0] * len(ids), labels))
    return out, truncated


def encode_examples(
    examples: list[Example],
    tokenizer: Tokenizer,
    frame: Framing,
    labels: list[str],
    max_length: int,
    name: str,
) -> list[Encoded]:
    """Token ids and label ids of every example; `name` says which file in the truncation notice."""
    label_ids = {label: i for i, label in enumerate(labels)}
    if isinstance(examples[0], SeqExample):
        encoded, truncated = _encode_seq(examples, tokenizer, frame, label_ids, max_length)  # type: ignore[arg-type]
        unit = "examples"
    else:
        encoded, truncated = _encode_tokens(examples, tokenizer, frame, label_ids, max_length)  # type: ignore[arg-type]
        unit = "words"
    if truncated:
        log.info("%s: %d %s cut by --max-length %d", name, truncated, unit, max_length)
    return encoded


def collate(items: list[Encoded], pad: int, per_token: bool) -> dict[str, torch.Tensor]:
    """Right-padded tensors: input_ids, token_type_ids, attention_mask [B, T] and labels ([B] for
    sequence classification, [B, T] with per_token for token classification)."""
    width = max(len(item.input_ids) for item in items)
    input_ids = torch.full((len(items), width), pad, dtype=torch.long)
    token_type_ids = torch.zeros((len(items), width), dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = (
        torch.full((len(items), width), IGNORE, dtype=torch.long)
        if per_token
        else torch.empty(len(items), dtype=torch.long)
    )
    for row, item in enumerate(items):
        n = len(item.input_ids)
        input_ids[row, :n] = torch.tensor(item.input_ids)
        token_type_ids[row, :n] = torch.tensor(item.token_type_ids)
        attention_mask[row, :n] = 1
        if per_token:
            labels[row, :n] = torch.tensor(item.labels)
        else:
            labels[row] = item.labels[0]
    return {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": attention_mask,
        "labels": labels,
    }
