"""Data-prep throughput and memory, measured against the bare tokenizer in the same run.

The corpus is the built-in default corpus repeated until it reaches `corpus_mb` of JSONL (each
copy of a document gets a distinct prefix, so dedup keeps them all). The baseline is the
tokenizer alone: `encode_batch` over the same texts, already in memory, in this one process —
the most any prep could do per core. Each prep variant runs the real `prepare()` (reading,
filters, dedup hashes, tokenizing, Arrow shards, merge) with a given worker count; its tokens/s
per worker against the baseline is the prep's efficiency per core. Peak memory is the summed
PSS of the prep process tree, sampled every 0.5 s (reading PSS costs ~4 ms per process, so
sampling faster would steal a visible share of the CPU the prep runs on).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass

import psutil

from data_prep.default_corpus import build_default_corpus
from data_prep.pipeline import PrepConfig, prepare
from data_prep.tokenizer import load_tokenizer, train_sentencepiece

BATCH_DOCS = 256


@dataclass
class PrepBenchResult:
    variant: str
    workers: int
    input_mb: float
    docs: int
    tokens: int
    seconds: float
    docs_per_s: float
    tokens_per_s: float
    per_core_vs_tokenizer: float  # tokens/s per worker / bare tokenizer tokens/s
    vs_first_prep: float  # tokens/s against the first prep variant (speedup from more workers)
    peak_pss_mb: float


class PeakMemory:
    """Samples the summed memory of this process and its children in a background thread.

    PSS, not RSS: forked workers share the parent's pages, and summing RSS would count those
    once per process."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s, self.peak = interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        total = 0
        for process in (me, *me.children(recursive=True)):
            try:
                total += process.memory_full_info().pss
            except psutil.Error:  # exited between listing and reading
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def default_texts(work_dir: str) -> list[str]:
    texts = []
    for path in build_default_corpus(os.path.join(work_dir, "default_corpus"), os.cpu_count() or 1):
        with open(path, encoding="utf-8") as fh:
            texts.extend(json.loads(line)["text"] for line in fh if line.strip())
    return texts


def write_corpus(path: str, texts: list[str], target_mb: float) -> int:
    """JSONL of `texts` cycled (copy k prefixed with its number) up to `target_mb`; returns docs."""
    written = docs = 0
    with open(path, "w", encoding="utf-8") as fh:
        while written < target_mb * 1e6:
            line = json.dumps({"text": f"({docs // len(texts)}) {texts[docs % len(texts)]}"}) + "\n"
            fh.write(line)
            written += len(line.encode())
            docs += 1
    return docs


def _bare_tokenizer(tokenizer_path: str, corpus: str, input_mb: float) -> PrepBenchResult:
    tok = load_tokenizer(tokenizer_path)
    with open(corpus, encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    started = time.perf_counter()
    tokens = 0
    for i in range(0, len(texts), BATCH_DOCS):
        tokens += sum(len(ids) + 1 for ids in tok.encode_batch(texts[i : i + BATCH_DOCS]))  # + EOS
    seconds = time.perf_counter() - started
    return PrepBenchResult(
        "bare tokenizer",
        1,
        input_mb,
        len(texts),
        tokens,
        seconds,
        len(texts) / seconds,
        tokens / seconds,
        1.0,
        0.0,
        0.0,
    )


def _prep(
    corpus: str, tokenizer_path: str, out: str, workers: int, input_mb: float, baseline: float, unit_mb: float
) -> PrepBenchResult:
    shutil.rmtree(out, ignore_errors=True)
    cfg = PrepConfig(
        inputs=[corpus], out=out, tokenizer=tokenizer_path, workers=workers, unit_mb=unit_mb, progress=False
    )
    with PeakMemory() as rss:
        started = time.perf_counter()
        manifest = prepare(cfg)
        seconds = time.perf_counter() - started
    assert manifest is not None
    splits = manifest.header["splits"].values()
    docs, tokens = sum(s["docs"] for s in splits), sum(s["tokens"] for s in splits)
    per_core = tokens / seconds / workers / baseline if baseline else 0.0
    return PrepBenchResult(
        f"prep {workers} worker{'s' if workers > 1 else ''}",
        workers,
        input_mb,
        docs,
        tokens,
        seconds,
        docs / seconds,
        tokens / seconds,
        per_core,
        0.0,
        rss.peak / 2**20,
    )


def bench_prep(
    corpus_mb: float,
    workers: list[int],
    tokenizer: str | None = None,
    work_dir: str | None = None,
    unit_mb: float = 0.0,
    baseline: bool = True,
) -> list[PrepBenchResult]:
    """Bare tokenizer, then prep with each worker count, on the same ~`corpus_mb` MB corpus.

    `baseline=False` skips the bare tokenizer (it holds every text in memory): for measuring
    prep's peak memory on a corpus of several GB."""
    own_dir = work_dir is None
    work_dir = work_dir or tempfile.mkdtemp(prefix="dist_llm_bench_prep_")
    try:
        texts = default_texts(work_dir)
        corpus = os.path.join(work_dir, "corpus.jsonl")
        write_corpus(corpus, texts, corpus_mb)
        input_mb = os.path.getsize(corpus) / 1e6
        if tokenizer is None:
            tokenizer = train_sentencepiece(texts, os.path.join(work_dir, "tokenizer.model"), 8192)
        results = [_bare_tokenizer(tokenizer, corpus, input_mb)] if baseline else []
        bare_tokens_per_s = results[0].tokens_per_s if baseline else 0.0
        preps = [
            _prep(
                corpus,
                tokenizer,
                os.path.join(work_dir, f"out{count}"),
                count,
                input_mb,
                bare_tokens_per_s,
                unit_mb,
            )
            for count in workers
        ]
        for r in preps:
            r.vs_first_prep = r.tokens_per_s / preps[0].tokens_per_s
        return results + preps
    finally:
        if own_dir:
            shutil.rmtree(work_dir, ignore_errors=True)


def format_table(results: list[PrepBenchResult]) -> str:
    lines = [
        f"{'variant':<16} {'input MB':>9} {'docs/s':>9} {'tokens/s':>11} {'per core vs tok':>16} "
        f"{'vs 1st prep':>12} {'peak PSS MB':>12}"
    ]
    for r in results:
        vs_first = f"{r.vs_first_prep:.2f}x" if r.vs_first_prep else "-"
        per_core = f"{r.per_core_vs_tokenizer:.0%}" if r.per_core_vs_tokenizer else "-"
        rss = f"{r.peak_pss_mb:.0f}" if r.peak_pss_mb else "-"
        lines.append(
            f"{r.variant:<16} {r.input_mb:>9.1f} {r.docs_per_s:>9,.0f} {r.tokens_per_s:>11,.0f} "
            f"{per_core:>16} {vs_first:>12} {rss:>12}"
        )
    return "\n".join(lines)
