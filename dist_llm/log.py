"""One rank-aware logger for library code (the CLI may print; the library logs)."""

import logging
import os
import sys

_FORMAT = "%(asctime)s [%(rank_tag)s] %(levelname)s %(name)s: %(message)s"


class _RankFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.rank_tag = f"rank{os.environ.get('RANK', '0')}"
        return True


def get_logger(name: str) -> logging.Logger:
    """Logger under the `dist_llm` root; only rank 0 logs INFO unless DIST_LLM_ALL_RANKS=1."""
    root = logging.getLogger("dist_llm")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        handler.addFilter(_RankFilter())
        root.addHandler(handler)
        all_ranks = os.environ.get("DIST_LLM_ALL_RANKS") == "1"
        is_rank0 = os.environ.get("RANK", "0") == "0"
        root.setLevel(logging.INFO if (is_rank0 or all_ranks) else logging.WARNING)
        root.propagate = False
    return logging.getLogger(f"dist_llm.{name}" if not name.startswith("dist_llm") else name)
