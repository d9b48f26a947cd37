"""Data-prep memory where it used to grow with the corpus: merge's dedup, and one huge document.

`bench_dedup`: corpora of growing document counts (a few words each: the count is what dedup
pays for), half of each a copy of an earlier document spread over the whole corpus (so nearly
every copy sits in another work unit than its first); prep tokenizes each with `--no-merge`,
then `prep merge` runs alone in a fresh process, whose peak RSS (the kernel's high-water mark,
exact, no sampling) is the merge's memory. The same corpus is merged once for each
`--dedup-piece-keys`: the memory should stay flat once the document count passes it.

`bench_long_doc`: one single-line JSONL document of `mb` MB (the default corpus joined with
spaces), prepped by one in-process worker; the peak PSS of the process tree is the cost of the
longest document.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from data_prep.manifest import read_manifest
from data_prep.pipeline import PrepConfig, prepare
from data_prep.tokenizer import train_sentencepiece
from dist_llm.bench.prep import PeakMemory, default_texts


@dataclass
class DedupBenchResult:
    docs: int
    input_mb: float
    units: int
    piece_keys: int
    pieces: int
    kept_docs: int
    duplicates: int
    merge_s: float
    merge_peak_rss_mb: float


@dataclass
class LongDocBenchResult:
    doc_mb: float
    tokens: int
    seconds: float
    tokens_per_s: float
    peak_pss_mb: float


def _tokenizer(work_dir: str, tokenizer: str | None) -> tuple[list[str], str]:
    texts = default_texts(work_dir)
    if tokenizer is None:
        tokenizer = train_sentencepiece(texts, os.path.join(work_dir, "tokenizer.model"), 8192)
    return texts, tokenizer


def write_dup_corpus(path: str, texts: list[str], docs: int, seed: int = 0) -> None:
    """`docs` short JSONL documents; document i is new with probability 1/2, else a copy of a
    uniformly drawn earlier one (so copies reach back across the whole corpus)."""
    rng = random.Random(seed)
    made: list[int] = []
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(docs):
            key = made[rng.randrange(len(made))] if made and rng.random() < 0.5 else len(made)
            if key == len(made):
                made.append(key)
            words = texts[key % len(texts)].split()[:3]
            fh.write(json.dumps({"text": f"({key}) " + " ".join(words)}) + "\n")


_MERGE_AND_REPORT = """
import re, sys
from data_prep.__main__ import main
code = main(sys.argv[1:])
print(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
sys.exit(code)
"""


def _merge_alone(out: str, piece_keys: int) -> tuple[float, float]:
    """(seconds, peak RSS MB) of `prep merge` in a fresh single-worker process. The peak is the
    process's own VmHWM: rusage's maxrss would also count the parent's pages it had between fork
    and exec."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _MERGE_AND_REPORT, "merge", "--out", out, "--workers", "1"]
        + ["--dedup-piece-keys", str(piece_keys)],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"prep merge failed: {done.stderr[-2000:]}")
    return seconds, int(done.stdout.split()[-1]) / 1024


def bench_dedup(
    doc_counts: list[int],
    piece_keys: list[int],
    workers: int = 2,
    tokenizer: str | None = None,
    work_dir: str | None = None,
    unit_mb: float = 1.0,
) -> list[DedupBenchResult]:
    """Merge memory and time for each document count and each `--dedup-piece-keys`.

    Units have a fixed size, as at scale (where they reach the 128 MiB cap), so a larger corpus
    has more units, not larger ones: what a unit costs does not blur what the corpus costs."""
    own_dir = work_dir is None
    work_dir = work_dir or tempfile.mkdtemp(prefix="dist_llm_bench_dedup_")
    try:
        texts, tokenizer = _tokenizer(work_dir, tokenizer)
        results = []
        for docs in doc_counts:
            corpus, out = os.path.join(work_dir, f"dups{docs}.jsonl"), os.path.join(work_dir, f"out{docs}")
            write_dup_corpus(corpus, texts, docs)
            shutil.rmtree(out, ignore_errors=True)
            cfg = PrepConfig(
                inputs=[corpus],
                out=out,
                tokenizer=tokenizer,
                workers=workers,
                unit_mb=unit_mb,
                progress=False,
                merge=False,
            )
            prepare(cfg)
            for keys in piece_keys:
                seconds, peak = _merge_alone(out, keys)
                header = read_manifest(out).header
                pieces = sum(n.startswith("drops-") for n in os.listdir(os.path.join(out, "merge"))) // 2
                results.append(
                    DedupBenchResult(
                        docs,
                        os.path.getsize(corpus) / 1e6,
                        header["units"],
                        keys,
                        pieces,
                        sum(s["docs"] for s in header["splits"].values()),
                        header["filters"]["removed"]["duplicate"],
                        seconds,
                        peak,
                    )
                )
                shutil.rmtree(os.path.join(out, "merge"))
        return results
    finally:
        if own_dir:
            shutil.rmtree(work_dir, ignore_errors=True)


def bench_long_doc(
    mb: float, tokenizer: str | None = None, work_dir: str | None = None
) -> list[LongDocBenchResult]:
    """Peak memory and throughput of prep on one `mb` MB single-line document."""
    own_dir = work_dir is None
    work_dir = work_dir or tempfile.mkdtemp(prefix="dist_llm_bench_long_doc_")
    try:
        texts, tokenizer = _tokenizer(work_dir, tokenizer)
        corpus, out = os.path.join(work_dir, "long.jsonl"), os.path.join(work_dir, "out_long")
        with open(corpus, "w", encoding="utf-8") as fh:  # streamed: this process stays small
            fh.write('{"text": "')
            written, index = 0, 0
            while written < mb * 1e6:
                piece = json.dumps(texts[index % len(texts)].replace("\n", " "))[1:-1] + " "
                fh.write(piece)
                written, index = written + len(piece), index + 1
            fh.write('"}\n')
        shutil.rmtree(out, ignore_errors=True)
        cfg = PrepConfig(
            inputs=[corpus], out=out, tokenizer=tokenizer, workers=1, progress=False, val_fraction=0
        )
        with PeakMemory(interval_s=0.2) as memory:
            started = time.perf_counter()
            manifest = prepare(cfg)
            seconds = time.perf_counter() - started
        assert manifest is not None
        tokens = manifest.header["splits"]["train"]["tokens"]
        return [LongDocBenchResult(mb, tokens, seconds, tokens / seconds, memory.peak / 2**20)]
    finally:
        if own_dir:
            shutil.rmtree(work_dir, ignore_errors=True)


def format_table(results: list[DedupBenchResult] | list[LongDocBenchResult]) -> str:
    if results and isinstance(results[0], LongDocBenchResult):
        lines = [f"{'doc MB':>8} {'tokens':>12} {'seconds':>8} {'tokens/s':>10} {'peak PSS MB':>12}"]
        for r in results:
            rate = f"{r.tokens_per_s:>10,.0f}"
            lines.append(f"{r.doc_mb:>8.0f} {r.tokens:>12,} {r.seconds:>8.1f} {rate} {r.peak_pss_mb:>12.0f}")
        return "\n".join(lines)
    lines = [
        f"{'docs':>10} {'input MB':>9} {'units':>6} {'piece keys':>11} {'pieces':>7} {'kept':>10} "
        f"{'duplicates':>11} {'merge s':>8} {'merge peak RSS MB':>18}"
    ]
    for r in results:
        lines.append(
            f"{r.docs:>10,} {r.input_mb:>9.1f} {r.units:>6} {r.piece_keys:>11,} {r.pieces:>7} "
            f"{r.kept_docs:>10,} {r.duplicates:>11,} {r.merge_s:>8.1f} {r.merge_peak_rss_mb:>18.0f}"
        )
    return "\n".join(lines)
