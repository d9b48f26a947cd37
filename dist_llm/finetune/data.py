"""Labelled examples for the two tasks, read from records, and the label map built from the training
file. Nothing here knows the tokenizer or the model: these are checked (fields present, tags as
long as words, eval labels known) before any model is loaded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional, Union

from dist_llm.errors import DataError
from dist_llm.finetune.config import FinetuneConfig
from dist_llm.finetune.records import Record, read_records


@dataclass(frozen=True)
class SeqExample:
    """One text (or text pair) with one label."""

    where: str
    text: str
    pair: Optional[str]
    label: str


@dataclass(frozen=True)
class TokenExample:
    """Words with one tag each."""

    where: str
    words: list[str]
    tags: list[str]


Example = Union[SeqExample, TokenExample]


def _field(record: Record, key: str, flag: str) -> Any:
    value = record.fields.get(key)
    if value is None:
        present = ", ".join(sorted(str(k) for k in record.fields if k is not None)) or "none"
        state = "is empty" if key in record.fields else "is missing"
        raise DataError(
            f"{record.where}: field {key!r} {state} (fields: {present}); fill it in or "
            f"name the right field with {flag}"
        )
    return value


def _text(record: Record, key: str, flag: str) -> str:
    value = _field(record, key, flag)
    if not isinstance(value, str):
        raise DataError(
            f"{record.where}: field {key!r} is a {type(value).__name__} ({value!r:.60}), "
            f"not a string; {flag} must name a text field"
        )
    return value


def _label(record: Record, key: str) -> str:
    """Labels are kept as strings, so the JSONL label 1 and the CSV label "1" are the same class."""
    value = _field(record, key, "--label-field")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(
            f"{record.where}: label field {key!r} holds {value!r:.60}; a label is a string or an integer"
        )
    if isinstance(value, str) and not value.strip():
        raise DataError(f"{record.where}: label field {key!r} is blank")
    return str(value)


def _word_list(record: Record, key: str, flag: str) -> list[str]:
    """A JSON list of strings, or a string: whitespace-separated words, or a JSON list as CSV holds it."""
    value = _field(record, key, flag)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{record.where}: field {key!r} starts like a JSON list but is not one "
                    f"({exc.msg}); write space-separated words or a valid JSON list"
                ) from None
        else:
            value = text.split()
    if not isinstance(value, list) or not all(
        isinstance(w, (str, int)) and not isinstance(w, bool) for w in value
    ):
        raise DataError(
            f"{record.where}: field {key!r} must be a list of strings (or one string of "
            f"space-separated words), got {value!r:.60}"
        )
    return [str(w) for w in value]


def seq_example(record: Record, cfg: FinetuneConfig) -> SeqExample:
    pair = _text(record, cfg.text_pair_field, "--text-pair-field") if cfg.text_pair_field else None
    return SeqExample(
        record.where, _text(record, cfg.text_field, "--text-field"), pair, _label(record, cfg.label_field)
    )


def token_example(record: Record, cfg: FinetuneConfig) -> TokenExample:
    words = _word_list(record, cfg.tokens_field, "--tokens-field")
    tags = _word_list(record, cfg.tags_field, "--tags-field")
    if len(words) != len(tags):
        raise DataError(
            f"{record.where}: {len(words)} {cfg.tokens_field!r} but {len(tags)} "
            f"{cfg.tags_field!r}; every word needs exactly one tag"
        )
    if not words:
        raise DataError(f"{record.where}: field {cfg.tokens_field!r} has no words")
    return TokenExample(record.where, words, tags)


def read_examples(path: str, cfg: FinetuneConfig) -> list[Example]:
    """The examples of one labelled file for cfg.task."""
    make = seq_example if cfg.task == "seq" else token_example
    return [make(record, cfg) for record in read_records(path)]


def example_labels(example: Example) -> list[str]:
    return [example.label] if isinstance(example, SeqExample) else example.tags


def _sort_key(name: str) -> tuple[int, Union[int, str]]:
    """Integer labels sort numerically (2 before 10), so 0..N-1 keep their ids; others by name."""
    try:
        return (0, int(name))
    except ValueError:
        return (1, name)


def build_label_map(examples: list[Example]) -> list[str]:
    """Class names in id order: every label of the training examples, sorted (stable across runs
    and file orders). Ids are positions in this list."""
    names = {label for example in examples for label in example_labels(example)}
    return sorted(names, key=_sort_key)


def check_labels(examples: list[Example], labels: list[str]) -> None:
    """Every label in an evaluation file must be one the model was trained on."""
    known = set(labels)
    for example in examples:
        for label in example_labels(example):
            if label not in known:
                shown = ", ".join(labels[:20]) + (" ..." if len(labels) > 20 else "")
                raise DataError(
                    f"{example.where}: label {label!r} does not occur in the training file "
                    f"(its labels: {shown}); fix the label or add training examples for it"
                )
