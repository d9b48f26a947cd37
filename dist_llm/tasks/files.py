"""Task files: JSONL, one example per line, either multiple-choice or completion (one kind per file).

    {"context": "The capital of France is", "choices": [" Paris", " Rome", " Madrid"], "answer": 0}
    {"context": "Two plus two is", "target": " four"}

A continuation (choice or target) is appended to its context verbatim, so it carries its own
leading space. Other fields (ids, provenance) are ignored. Files are local paths or URIs (s3://...).
Every problem is a DataError naming the file, the line and the field, raised by the preflight check
before any rank starts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterator

from data_prep.atomic import atomic_write_text
from data_prep.store import local_copy
from dist_llm.config import EvalConfig
from dist_llm.errors import DataError
from dist_llm.uri import join

MULTIPLE_CHOICE, COMPLETION = "multiple_choice", "completion"
TASKS_DIR = "tasks"
"""A dataset's directory of task files: eval.tasks names them without a path."""


@dataclass
class Example:
    context: str
    continuations: list[str]
    """Multiple-choice: the choices; completion: the one target."""
    answer: int
    """Index of the right continuation (0 for a completion)."""


@dataclass
class Task:
    name: str
    path: str
    kind: str
    """MULTIPLE_CHOICE or COMPLETION."""
    examples: list[Example]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def parse_example(record: Any, where: str) -> tuple[str, Example]:
    """(kind, example) of one decoded JSON line; `where` ("file:line") prefixes every error."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: a JSON {type(record).__name__}, expected an object with a 'context' field")
    context = record.get("context")
    if not isinstance(context, str):
        raise DataError(
            f"{where}: field 'context' must be a string (may be empty), got {_short(context)}"
            + ("; the field is missing" if "context" not in record else "")
        )
    if "choices" in record and "target" in record:
        raise DataError(
            f"{where}: has both 'choices' (multiple-choice) and 'target' (completion); "
            "keep the one this task is scored by"
        )
    if "target" in record:
        target = record["target"]
        if not _nonempty_str(target):
            raise DataError(f"{where}: field 'target' must be a non-empty string, got {_short(target)}")
        return COMPLETION, Example(context, [target], 0)
    if "choices" not in record:
        raise DataError(
            f"{where}: no field 'choices' (multiple-choice, with 'answer') or 'target' (completion); "
            f"fields present: {sorted(record)}"
        )
    choices = record["choices"]
    if not (isinstance(choices, list) and len(choices) >= 2 and all(_nonempty_str(c) for c in choices)):
        raise DataError(
            f"{where}: field 'choices' must be a list of at least 2 non-empty strings, got {_short(choices)}"
        )
    answer = record.get("answer")
    if not (isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices)):
        raise DataError(
            f"{where}: field 'answer' must be the index of the right choice, an integer in "
            f"0..{len(choices) - 1}, got {_short(answer)}"
            + ("; the field is missing" if "answer" not in record else "")
        )
    return MULTIPLE_CHOICE, Example(context, list(choices), answer)


def jsonl_records(path: str, missing: str) -> Iterator[tuple[str, Any]]:
    """("file:line", decoded JSON) of every non-blank line of a JSONL file; `missing` is the fix
    told when the file does not exist."""
    try:
        f = open(local_copy(path), "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: not found; {missing}") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a JSONL file") from None
    with f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None


def _examples(path: str, max_examples: int) -> Iterator[tuple[str, str, Example]]:
    """(where, kind, example) of the first `max_examples` (0 = all) examples of a task file."""
    missing = "write the task file with `dist-llm tasks make` or `dist-llm tasks convert`, or fix eval.tasks"
    for count, (where, record) in enumerate(jsonl_records(path, missing), start=1):
        yield where, *parse_example(record, where)
        if count == max_examples:
            return


def read_task(path: str, name: str, max_examples: int = 0) -> Task:
    """A task file, checked line by line; its first `max_examples` examples (0 = all)."""
    kind = ""
    first = ""
    examples: list[Example] = []
    for where, line_kind, example in _examples(path, max_examples):
        if not kind:
            kind, first = line_kind, where
        elif line_kind != kind:
            raise DataError(
                f"{where}: a {line_kind.replace('_', '-')} example, but {first} made this a "
                f"{kind.replace('_', '-')} task; a task file holds one kind: split the file"
            )
        examples.append(example)
    if not examples:
        raise DataError(f"{path}: no examples (the task file is empty)")
    return Task(name=name, path=path, kind=kind, examples=examples)


def is_task_name(entry: str) -> bool:
    """An eval.tasks entry naming a file of the dataset's tasks/ directory rather than a path."""
    return "/" not in entry and not entry.endswith(".jsonl")


def task_files(cfg: EvalConfig, data_path: str) -> list[str]:
    """The file of each eval.tasks entry; `data_path` (data.path, or the first source's) holds the
    tasks named bare."""
    return [join(data_path, TASKS_DIR, f"{t}.jsonl") if is_task_name(t) else t for t in cfg.tasks]


def read_tasks(cfg: EvalConfig, data_path: str) -> list[Task]:
    """Every task of `eval.tasks`."""
    return [
        read_task(path, name, cfg.tasks_max_examples)
        for path, name in zip(task_files(cfg, data_path), cfg.task_names())
    ]


def write_task_file(path: str, records: list[dict[str, Any]]) -> None:
    """Write task records (each checked by `parse_example`) as a JSONL file, atomically."""
    for i, record in enumerate(records, start=1):
        parse_example(record, f"{path}:{i}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def check_task_files(cfg: EvalConfig, data_path: str) -> None:
    """Preflight: every task file exists and every line is a well-formed example."""
    read_tasks(cfg, data_path)
