"""The built-in default corpus: Python standard-library docstrings plus pydoc topics.

Why this corpus: it is real English technical prose that already sits on every Python install,
so `dist-llm prep` with no inputs works offline, in seconds, with no download and no licence
question beyond Python's own. The build is deterministic (sorted walk, ordered pool results)
so two machines with the same Python version produce byte-identical JSONL.
"""

from __future__ import annotations

import ast
import json
import multiprocessing
import os
import sys
import sysconfig
from collections.abc import Iterator

from data_prep.atomic import atomic_write_text
from dist_llm.log import get_logger

log = get_logger("data_prep.default_corpus")

MIN_DOCSTRING_CHARS = 40
DOCSTRINGS_FILE = "stdlib_docstrings.jsonl"
TOPICS_FILE = "pydoc_topics.jsonl"
MARKER_FILE = "COMPLETE"
# Directories whose docstrings are either not stdlib (site-packages) or test scaffolding.
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})


def _stdlib_files(stdlib: str) -> list[tuple[str, str]]:
    """(path, dotted module name) of every stdlib .py file, in sorted walk order."""
    found: list[tuple[str, str]] = []
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            if not name.endswith(".py") or name.startswith("test_"):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, stdlib)[: -len(".py")].split(os.sep)
            if rel[-1] == "__init__":
                rel = rel[:-1]
            if rel:
                found.append((path, ".".join(rel)))
    return found


def _walk_docstrings(node: ast.AST, prefix: str) -> Iterator[tuple[str, str]]:
    """(qualname, docstring) for every class/function below `node`, depth first, source order."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            qualname = f"{prefix}.{child.name}" if prefix else child.name
            doc = ast.get_docstring(child)
            if doc:
                yield qualname, doc
            yield from _walk_docstrings(child, qualname)


def _file_records(item: tuple[str, str]) -> list[dict[str, str]]:
    """Docstring records of one stdlib file; runs in a pool worker, so it must be top level."""
    path, module = item
    try:
        with open(path, "rb") as fh:
            tree = ast.parse(fh.read(), filename=path)
    except (SyntaxError, ValueError, OSError):
        # A few stdlib files are deliberately unparsable fixtures; they are not prose anyway.
        return []
    records = []
    module_doc = ast.get_docstring(tree)
    if module_doc:
        records.append(("<module>", module_doc))
    records.extend(_walk_docstrings(tree, ""))
    return [
        {"text": doc, "source": f"{module}:{qualname}"}
        for qualname, doc in records
        if len(doc) >= MIN_DOCSTRING_CHARS
    ]


def _topic_records() -> list[dict[str, str]]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distro Pythons ship without pydoc_data
        log.warning("pydoc_data is not installed; the default corpus has docstrings only")
        return []
    return [
        {"text": topics[key], "source": f"pydoc_data.topics:{key}"}
        for key in sorted(topics)
        if len(topics[key].strip()) >= MIN_DOCSTRING_CHARS
    ]


def _write_jsonl(path: str, records: list[dict[str, str]]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    atomic_write_text(path, text)


def _marker_text() -> str:
    # The stdlib differs between Python versions, so a cache from another version is stale.
    return f"python={sys.version.split()[0]} min_chars={MIN_DOCSTRING_CHARS}\n"


def build_default_corpus(out_dir: str, workers: int | None = None) -> list[str]:
    """Write the default corpus as JSONL files into `out_dir` and return their paths.

    Reuses existing files when the completion marker matches this Python version; the marker
    is written last, so an interrupted build is simply redone.
    """
    paths = [os.path.join(out_dir, DOCSTRINGS_FILE), os.path.join(out_dir, TOPICS_FILE)]
    marker = os.path.join(out_dir, MARKER_FILE)
    if os.path.isfile(marker) and all(os.path.isfile(p) for p in paths):
        with open(marker, encoding="utf-8") as fh:
            if fh.read() == _marker_text():
                log.info("reusing default corpus in %s", out_dir)
                return paths
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(marker):
        os.remove(marker)

    files = _stdlib_files(sysconfig.get_paths()["stdlib"])
    workers = max(1, workers or os.cpu_count() or 1)
    if workers == 1:
        per_file = [_file_records(item) for item in files]
    else:
        with multiprocessing.Pool(workers) as pool:
            per_file = list(pool.imap(_file_records, files, chunksize=16))
    docstrings = [record for records in per_file for record in records]
    topics = _topic_records()
    _write_jsonl(paths[0], docstrings)
    _write_jsonl(paths[1], topics)
    atomic_write_text(marker, _marker_text())
    log.info(
        "built default corpus in %s: %d docstrings from %d files, %d pydoc topics",
        out_dir,
        len(docstrings),
        len(files),
        len(topics),
    )
    return paths
