"""Standard multiple-choice benchmarks, from a local copy in their public JSONL form, to task files.

The prompts follow the conventions lm-eval-harness uses for these tasks (a choice is the context's
continuation after one space), so accuracies are comparable with published zero-shot numbers:

- HellaSwag (`hellaswag_val.jsonl`: activity_label, ctx_a, ctx_b, endings, label): context
  "<activity_label>: <ctx_a> <Ctx_b>", choices " <ending>", bracketed markup such as "[title]" and
  "[header]" removed.
- ARC (`ARC-Challenge-Test.jsonl`, `ARC-Easy-Test.jsonl`: question.stem, question.choices[].text
  and .label, answerKey): context "Question: <stem>\\nAnswer:", choices " <text>".
- PIQA (`valid.jsonl`: goal, sol1, sol2; labels in `valid-labels.lst`, one per line, or a `label`
  field in each record): context "Question: <goal>\\nAnswer:", choices " <sol1>", " <sol2>".

Nothing is downloaded; each problem is a DataError naming the input file, line and field.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from dist_llm.errors import DataError
from dist_llm.tasks.files import jsonl_records, parse_example, write_task_file

Record = dict[str, Any]


def _field(record: Any, where: str, *keys: str) -> Any:
    """record[keys[0]][keys[1]]...; a DataError naming the dotted field if it is missing."""
    value = record
    for i, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            name = ".".join(keys[: i + 1])
            raise DataError(f"{where}: no field {name!r}; is this the right benchmark file?")
        value = value[key]
    return value


def _text(record: Any, where: str, *keys: str) -> str:
    value = _field(record, where, *keys)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {'.'.join(keys)!r} must be a string, got {type(value).__name__}")
    return value


def _label(value: Any, where: str, key: str, n: int) -> int:
    """An answer index in 0..n-1 from an int or a numeric string (HellaSwag writes both)."""
    try:
        index = int(value)
    except (TypeError, ValueError):
        index = -1
    if not 0 <= index < n or isinstance(value, bool):
        raise DataError(f"{where}: field {key!r}={value!r} is not an answer index in 0..{n - 1}")
    return index


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[[^\]]*\]", "", text)
    return re.sub(r" {2,}", " ", text)


def hellaswag(record: Any, where: str) -> Record:
    ctx_b = _text(record, where, "ctx_b")
    context = f"{_text(record, where, 'activity_label')}: {_text(record, where, 'ctx_a')} "
    context += ctx_b[:1].upper() + ctx_b[1:]
    endings = _field(record, where, "endings")
    if not isinstance(endings, list) or not all(isinstance(e, str) for e in endings):
        raise DataError(f"{where}: field 'endings' must be a list of strings")
    if record.get("label") in (None, ""):
        raise DataError(
            f"{where}: field 'label' is missing or empty (HellaSwag's public test split has no "
            "labels); convert the validation split, hellaswag_val.jsonl"
        )
    return {
        "context": _hellaswag_clean(context),
        "choices": [" " + _hellaswag_clean(e) for e in endings],
        "answer": _label(record["label"], where, "label", len(endings)),
    }


def arc(record: Any, where: str) -> Record:
    choices = _field(record, where, "question", "choices")
    if not isinstance(choices, list) or not choices:
        raise DataError(f"{where}: field 'question.choices' must be a non-empty list")
    labels = [_text(c, where, "label") for c in choices]
    key = _text(record, where, "answerKey")
    if key not in labels:
        raise DataError(f"{where}: field 'answerKey'={key!r} is none of the choice labels {labels}")
    return {
        "context": f"Question: {_text(record, where, 'question', 'stem')}\nAnswer:",
        "choices": [" " + _text(c, where, "text") for c in choices],
        "answer": labels.index(key),
    }


def piqa(record: Any, where: str, label: Any = None) -> Record:
    if label is None:
        if "label" not in record:
            raise DataError(
                f"{where}: no field 'label'; PIQA's public files keep the labels apart: pass "
                "--labels valid-labels.lst"
            )
        label = record["label"]
    return {
        "context": f"Question: {_text(record, where, 'goal')}\nAnswer:",
        "choices": [" " + _text(record, where, "sol1"), " " + _text(record, where, "sol2")],
        "answer": _label(label, where, "label", 2),
    }


CONVERTERS: dict[str, Callable[..., Record]] = {"hellaswag": hellaswag, "arc": arc, "piqa": piqa}


def _separate_labels(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        raise DataError(f"{path}: labels file not found") from None


def _checked(record: Record, where: str) -> Record:
    """A converted example that is not a valid task example is reported at its input line."""
    parse_example(record, f"{where} (converted)")
    return record


def convert(benchmark: str, inputs: str, out: str, labels: str | None = None) -> int:
    """Write the task file `out` from the benchmark file `inputs`; returns its number of examples.
    `labels`: a file of one answer per line, for benchmarks that publish them apart (PIQA)."""
    if benchmark not in CONVERTERS:
        raise DataError(f"unknown benchmark {benchmark!r}; one of {sorted(CONVERTERS)}")
    if labels is not None and benchmark != "piqa":
        raise DataError(f"--labels is for PIQA's separate labels file, not {benchmark}")
    answers = _separate_labels(labels) if labels is not None else None
    records = []
    missing = "give the path of a local copy of the benchmark file"
    for i, (where, record) in enumerate(jsonl_records(inputs, missing)):
        if answers is None:
            records.append(_checked(CONVERTERS[benchmark](record, where), where))
            continue
        if i >= len(answers):
            raise DataError(f"{labels}: {len(answers)} labels, but {where} is example {i + 1}")
        records.append(_checked(piqa(record, where, answers[i]), where))
    if answers is not None and len(answers) != len(records):
        raise DataError(f"{labels}: {len(answers)} labels for {len(records)} examples in {inputs}")
    if not records:
        raise DataError(f"{inputs}: no examples")
    write_task_file(out, records)
    return len(records)
