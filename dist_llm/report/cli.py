"""`dist-llm report RUN_DIR`: plots and a markdown summary of a training run. Prints the paths written."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="PNG plots (loss, throughput, lr, memory) and a markdown summary "
        "of a training run, from its metrics.jsonl, config and checkpoints",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (logging.run_dir)")
    p.add_argument("--out", help="output directory (default: RUN_DIR/report)")


def run(args: argparse.Namespace) -> int:
    from dist_llm.report.build import write_report  # matplotlib and torch: only when a report is made

    for path in write_report(args.run_dir, args.out):
        print(path)
    return 0
