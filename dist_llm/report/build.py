"""write_report: a run directory in, a folder of PNGs and summary.md out."""

from __future__ import annotations

import os

from dist_llm.errors import DataError
from dist_llm.log import get_logger
from dist_llm.report.facts import read_facts
from dist_llm.report.history import read_history
from dist_llm.report.plots import write_plots
from dist_llm.report.summary import format_summary

log = get_logger("report")

SUMMARY = "summary.md"


def write_report(run_dir: str, out_dir: str | None = None) -> list[str]:
    """Write the plots and summary.md to out_dir (default <run_dir>/report); the paths written."""
    if not os.path.isdir(run_dir):
        raise DataError(
            f"{run_dir}: no such run directory; pass the directory training wrote "
            "metrics.jsonl to (its logging.run_dir)"
        )
    history = read_history(run_dir)
    facts = read_facts(run_dir)
    out_dir = out_dir or os.path.join(run_dir, "report")
    os.makedirs(out_dir, exist_ok=True)
    plots, skipped = write_plots(history, out_dir)
    facts.notes += [f"{name} not drawn: {why}" for name, why in skipped.items()]
    summary = os.path.join(out_dir, SUMMARY)
    with open(summary, "w", encoding="utf-8") as f:
        f.write(format_summary(history, facts, plots, out_dir))
    log.info(
        "report of %s (%d train steps, %d resumes) written to %s",
        run_dir,
        len(history.train),
        len(history.resumed_at),
        out_dir,
    )
    return [*plots.values(), summary]
