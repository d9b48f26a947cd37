"""`prepare()`: inputs -> tokenizer -> tokenized shards -> manifest, in that order.

Crash safety comes from ordering: the old manifest is deleted before anything else and the new
one is written after every shard is closed, so an interrupted run leaves no manifest at all.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from tqdm import tqdm

from data_prep.atomic import TMP_SUFFIX, publish
from data_prep.default_corpus import build_default_corpus
from data_prep.manifest import build_manifest, remove_manifest, write_manifest
from data_prep.readers import Document, ErrorPolicy, read_documents, resolve_inputs
from data_prep.tokenizer import Tokenizer, load_tokenizer, train_sentencepiece
from data_prep.workers import encode_batches
from data_prep.writer import SplitWriter, clear_shards, is_validation
from dist_llm.errors import DataError
from dist_llm.log import get_logger

log = get_logger("data_prep.pipeline")

SP_TOKENIZER_NAME = "tokenizer.model"
HF_TOKENIZER_NAME = "tokenizer"
DEFAULT_CORPUS_DIR = "default_corpus"
BATCH_DOCS = 256
BATCH_CHARS = 1 << 20


@dataclass
class PrepConfig:
    """Arguments of one prep run; recorded verbatim under `args` in the manifest."""

    inputs: list[str] = field(default_factory=list)  # files/dirs; empty = built-in default corpus
    out: str = "runs/data"  # output directory (manifest, shards, tokenizer)
    format: str = "auto"  # auto | text | jsonl
    text_field: str = "text"  # JSONL key holding the document text
    text_split: str = "file"  # text files: one document per file | line | paragraph
    workers: int | None = None  # tokenizer processes; None = os.cpu_count()
    tokenizer: str | None = None  # existing .model file or HF dir; None = train sentencepiece
    vocab_size: int = 8192  # size of a trained tokenizer
    tokenizer_type: str = "bpe"  # bpe | unigram, for a trained tokenizer
    val_fraction: float = 0.01  # share of documents hashed into validation
    shard_tokens: int = 1_048_576  # a shard closes once it holds at least this many tokens
    add_bos: bool = False  # prepend BOS to every document (EOS is always appended)
    on_error: str = "raise"  # raise | skip (and count) bad input
    progress: bool = True  # tqdm bar on stderr when it is a terminal


def _batches(docs: Iterable[Document], val_fraction: float) -> Iterator[tuple[list[bool], list[str]]]:
    """Group documents (by count and size) and attach their split flags as the batch tag."""
    flags: list[bool] = []
    texts: list[str] = []
    chars = 0
    for doc in docs:
        flags.append(is_validation(doc.text, val_fraction))
        texts.append(doc.text)
        chars += len(doc.text)
        if len(texts) >= BATCH_DOCS or chars >= BATCH_CHARS:
            yield flags, texts
            flags, texts, chars = [], [], 0
    if texts:
        yield flags, texts


def _copy_tokenizer(src: str, out: str) -> str:
    """Copy an existing tokenizer into `out` so the data dir is self-contained; returns rel path."""
    load_tokenizer(src)  # validate before touching the output directory
    rel = HF_TOKENIZER_NAME if os.path.isdir(src) else SP_TOKENIZER_NAME
    dest = os.path.join(out, rel)
    if os.path.exists(dest) and os.path.samefile(src, dest):
        return rel
    if os.path.isdir(src):
        shutil.rmtree(dest + TMP_SUFFIX, ignore_errors=True)
        shutil.copytree(src, dest + TMP_SUFFIX)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(dest + TMP_SUFFIX, dest)
    else:
        shutil.copyfile(src, dest + TMP_SUFFIX)
        publish(dest + TMP_SUFFIX, dest)
    return rel


def _prepare_tokenizer(cfg: PrepConfig, inputs: list[str]) -> tuple[Tokenizer, str]:
    if cfg.tokenizer:
        rel = _copy_tokenizer(cfg.tokenizer, cfg.out)
    else:
        # Training pass: bad input raises here already under --on-error raise; the skip
        # counts of this pass are thrown away because the tokenizing pass counts again.
        policy = ErrorPolicy(cfg.on_error)
        files = resolve_inputs(inputs, policy)
        docs = read_documents(files, policy, cfg.format, cfg.text_field, cfg.text_split)
        started = time.perf_counter()
        rel = SP_TOKENIZER_NAME
        train_sentencepiece(
            (d.text for d in docs), os.path.join(cfg.out, rel), cfg.vocab_size, cfg.tokenizer_type
        )
        log.info("trained %s tokenizer (vocab %d) in %.1fs", cfg.tokenizer_type, cfg.vocab_size,
                 time.perf_counter() - started)
    tokenizer = load_tokenizer(os.path.join(cfg.out, rel))
    if tokenizer.eos_id is None:
        raise DataError(
            f"--tokenizer {cfg.tokenizer}: it has no EOS token, which prep appends to every "
            "document; use a tokenizer with an eos_token"
        )
    if cfg.add_bos and tokenizer.bos_id is None:
        raise DataError(f"--tokenizer {cfg.tokenizer}: it has no BOS token; drop --add-bos")
    return tokenizer, rel


def prepare(cfg: PrepConfig) -> dict:
    """Run the whole prep; returns the manifest that was written."""
    started = time.perf_counter()
    workers = cfg.workers if cfg.workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise DataError(f"--workers {cfg.workers} must be >= 1")
    os.makedirs(cfg.out, exist_ok=True)
    remove_manifest(cfg.out)
    clear_shards(cfg.out)
    splitter = SplitWriter(cfg.out, cfg.shard_tokens, cfg.val_fraction)  # validates its args early

    inputs = list(cfg.inputs)
    if not inputs:
        inputs = build_default_corpus(os.path.join(cfg.out, DEFAULT_CORPUS_DIR), workers)
    tokenizer, tokenizer_rel = _prepare_tokenizer(cfg, inputs)

    policy = ErrorPolicy(cfg.on_error)
    files = resolve_inputs(inputs, policy)
    docs = read_documents(files, policy, cfg.format, cfg.text_field, cfg.text_split)
    encoded = encode_batches(_batches(docs, cfg.val_fraction), tokenizer.path, workers, cfg.add_bos)
    show = cfg.progress and sys.stderr.isatty()
    n_docs = n_tokens = 0
    tokenize_started = time.perf_counter()
    with tqdm(desc="tokenizing", unit="doc", disable=not show, file=sys.stderr) as bar:
        for flags, batch in encoded:
            for index, validation in enumerate(flags):
                splitter.add(batch.document(index), validation)
            n_docs += len(flags)
            n_tokens += len(batch.tokens)
            bar.update(len(flags))
            elapsed = max(time.perf_counter() - tokenize_started, 1e-9)
            bar.set_postfix_str(f"{n_tokens / elapsed:,.0f} tok/s", refresh=False)
    if n_docs == 0:
        raise DataError(f"no documents found in {inputs} (skipped: {policy.summary()['by_reason']})")
    splits = splitter.close()

    args = dataclasses.asdict(cfg) | {"inputs": inputs, "workers": workers}
    manifest = build_manifest(tokenizer, tokenizer_rel, splits, policy.summary(), args)
    write_manifest(cfg.out, manifest)
    n_shards = sum(len(s["shards"]) for s in splits.values())
    log.info(
        "prep done: %d docs (%d train / %d validation), %d tokens, %d shards, %d skipped, %.1fs -> %s",
        n_docs, splits["train"]["docs"], splits["validation"]["docs"], n_tokens, n_shards,
        policy.summary()["total"], time.perf_counter() - started, cfg.out,
    )
    return manifest
