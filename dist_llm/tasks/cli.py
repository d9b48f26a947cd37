"""`dist-llm tasks make | convert | check`: write task files for `eval.tasks` and check them."""

from __future__ import annotations

import argparse
import os


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tasks", help="write and check downstream task files (eval.tasks)")
    kinds = p.add_subparsers(dest="action", required=True)
    m = kinds.add_parser(
        "make",
        help="a multiple-choice continuation task from a prepared dataset's documents "
        "(pick the words that follow a passage among passages of other documents, or among "
        "the same words reordered)",
    )
    m.add_argument("data", help="dataset written by `dist-llm prep` (dir or URI)")
    m.add_argument(
        "--out",
        help="task file to write (default: DATA/tasks/continuation.jsonl, or word_order.jsonl "
        "with --distractors shuffled)",
    )
    m.add_argument("--split", default="validation", help="split to read (default: %(default)s)")
    m.add_argument("--choices", type=int, default=4, help="choices per example (default: %(default)s)")
    m.add_argument("--max-examples", type=int, default=1000, help="at most this many (default: %(default)s)")
    m.add_argument(
        "--distractors",
        choices=["documents", "shuffled"],
        default="documents",
        help="wrong choices: passages of other documents (default), or the true words reordered",
    )
    m.add_argument("--seed", type=int, default=0, help="draws the distractors and the answer positions")
    c = kinds.add_parser(
        "convert", help="a local copy of HellaSwag, ARC or PIQA (public JSONL form) to a task file"
    )
    c.add_argument("benchmark", choices=["hellaswag", "arc", "piqa"])
    c.add_argument("input", help="the benchmark's JSONL file, e.g. hellaswag_val.jsonl")
    c.add_argument("--out", required=True, help="task file to write, e.g. tasks/hellaswag.jsonl")
    c.add_argument("--labels", help="PIQA: the separate labels file (valid-labels.lst)")
    k = kinds.add_parser("check", help="check task files as `dist-llm train` does before it starts")
    k.add_argument("files", nargs="+", help="task files")


def run(args: argparse.Namespace) -> int:
    if args.action == "make":
        from dist_llm.tasks.continuation import write_continuation_task
        from dist_llm.tasks.files import TASKS_DIR

        name = "word_order" if args.distractors == "shuffled" else "continuation"
        out = args.out or os.path.join(args.data, TASKS_DIR, f"{name}.jsonl")
        n = write_continuation_task(
            args.data, out, args.split, args.choices, args.max_examples, args.seed, args.distractors
        )
        print(f"{out}: {n} examples")
        return 0
    from dist_llm.tasks.files import read_task

    if args.action == "convert":
        from dist_llm.tasks.convert import convert

        convert(args.benchmark, args.input, args.out, args.labels)
        files = [args.out]
    else:
        files = args.files
    for path in files:
        task = read_task(path, name=path)
        print(f"{path}: {len(task.examples)} {task.kind.replace('_', '-')} examples")
    return 0
