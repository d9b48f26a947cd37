"""`prepare()`: inputs -> plan of work units -> tokenizer -> units in parallel -> merge.

Crash safety and resume come from ordering: a unit's record is written after its shards, the
manifest after every record (by merge), and a re-run reuses each unit whose record and files
still match their checksums. An interrupted run therefore leaves no manifest, and running the
same command again finishes only what is missing.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from data_prep import store
from data_prep.atomic import TMP_SUFFIX, publish
from data_prep.dedup import MERGE_DIR, PIECE_KEYS, piece_count
from data_prep.default_corpus import build_default_corpus
from data_prep.filters import FilterConfig
from data_prep.identity import PREP_NAME, TOKENIZER_KEY, check_or_write, check_settings
from data_prep.inputs import resolve_inputs
from data_prep.manifest import MANIFEST_NAME, SHARD_TABLE_NAME, Manifest, remove_manifest
from data_prep.merge import merge, read_records
from data_prep.parts import resolve_part
from data_prep.planner import plan_units
from data_prep.readers import ErrorPolicy, read_unit
from data_prep.tokenizer import Tokenizer, load_tokenizer, train_sentencepiece
from data_prep.units import InputFile, ReadOptions, WorkUnit
from data_prep.workers import UnitJob, process_units
from data_prep.writer import UNITS_DIR
from dist_llm.errors import DataError
from dist_llm.log import get_logger
from dist_llm.metrics.sinks import format_eta
from dist_llm.uri import filesystem, is_local, join

log = get_logger("data_prep.pipeline")

SP_TOKENIZER_NAME = "tokenizer.model"
HF_TOKENIZER_NAME = "tokenizer"
DEFAULT_CORPUS_DIR = "default_corpus"
HF_CACHE_DIR = "hf_cache"
MIB = 1 << 20
# PrepConfig fields that shape how a run works, not what it writes.
_HOW_TO_RUN = (
    "workers",
    "num_parts",
    "part",
    "force",
    "progress",
    "tokenizer_only",
    "dedup_piece_keys",
    "merge",
)
PROGRESS_LOG_S = 30.0  # how often prep logs its progress when stderr is not a terminal


@dataclass
class PrepConfig:
    """Arguments of one prep run; those that shape the output form its identity (prep.json)."""

    inputs: list[str] = field(default_factory=list)  # files/dirs/globs/URIs; empty = default corpus
    out: str = "runs/data"  # output directory or s3:// prefix (manifest, shards, tokenizer)
    format: str = "auto"  # auto | text | jsonl | parquet | hf
    text_field: str = "text"  # JSONL key / Parquet or HF column holding the text
    text_split: str = "file"  # text files: one document per file | line | paragraph
    hf_split: str = "train"  # split of a saved HF DatasetDict or of load_dataset
    workers: int | None = None  # worker processes; None = os.cpu_count()
    tokenizer: str | None = None  # existing .model file or HF dir; None = train sentencepiece
    vocab_size: int = 8192  # size of a trained tokenizer
    tokenizer_type: str = "bpe"  # bpe | unigram, for a trained tokenizer
    tokenizer_sample_mb: float = 1024.0  # input read to train a tokenizer (spread over the corpus)
    tokenizer_only: bool = False  # train (or copy) the tokenizer, then stop
    val_fraction: float = 0.01  # share of documents hashed into validation
    shard_tokens: int = 1_048_576  # a shard closes once it holds at least this many tokens
    unit_mb: float = 0.0  # input MiB per work unit; 0 = total/64 clamped to [1, 128] MiB
    add_bos: bool = False  # prepend BOS to every document (EOS is always appended)
    filters: FilterConfig = field(default_factory=FilterConfig)
    on_error: str = "raise"  # raise | skip (and count) bad input
    num_parts: int | None = None  # machines sharing this prep; None = from the environment or 1
    part: int | None = None  # which of them this is
    dedup_piece_keys: int = PIECE_KEYS  # document hashes one merge process sorts at once
    merge: bool = True  # the last part to finish merges; False leaves it to `dist-llm prep merge`
    force: bool = False  # discard an existing run in `out` whose settings differ
    progress: bool = True  # progress bar on stderr when it is a terminal


def auto_unit_bytes(total_bytes: int) -> int:
    """About 64 units for a small corpus (so workers have something to share), at most 128 MiB
    per unit for a large one (bounded worker memory, fine-grained resume)."""
    return int(min(max(total_bytes // 64, MIB), 128 * MIB))


def _read_options(cfg: PrepConfig) -> ReadOptions:
    cache = (
        join(cfg.out, HF_CACHE_DIR)
        if is_local(cfg.out)
        else os.path.join(tempfile.gettempdir(), "dist_llm_hf_cache")
    )
    return ReadOptions(cfg.format, cfg.text_field, cfg.text_split, cfg.hf_split, cache)


def _training_texts(units: list[WorkUnit], opts: ReadOptions, policy: ErrorPolicy, sample_bytes: int):
    """Texts of evenly spaced units, about `sample_bytes` of input: enough for sentencepiece
    (which keeps at most a few million sentences anyway) without reading a huge corpus twice."""
    total = sum(u.size for u in units)
    stride = max(1, -(-total // max(sample_bytes, 1)))
    for unit in units[::stride]:
        for doc in read_unit(unit, opts, policy):
            yield doc.text


def _publish_tokenizer(src: str, out: str) -> str:
    """Copy an existing tokenizer into `out` (a self-contained dataset); returns its rel path."""
    rel = HF_TOKENIZER_NAME if os.path.isdir(src) else SP_TOKENIZER_NAME
    dest = join(out, rel)
    if not is_local(out):
        fs, path = filesystem(dest)
        fs.put(src, path, recursive=os.path.isdir(src))
        return rel
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


def _tokenizer(
    cfg: PrepConfig, units: list[WorkUnit], opts: ReadOptions, prep: dict | None
) -> tuple[Tokenizer, str, str]:
    """(tokenizer, path relative to out, local path). A trained one is reused on resume."""
    if cfg.tokenizer:
        tokenizer = load_tokenizer(cfg.tokenizer)  # validate before touching the output
        return tokenizer, _publish_tokenizer(cfg.tokenizer, cfg.out), cfg.tokenizer
    if prep is not None and prep.get("tokenizer") == SP_TOKENIZER_NAME:
        # Same settings as the earlier run (checked by the caller): its tokenizer is reused, as
        # training again could give another one and invalidate every finished unit.
        local = store.local_copy(join(cfg.out, SP_TOKENIZER_NAME))
        tokenizer = load_tokenizer(local)
        if tokenizer.sha256 == prep["identity"][TOKENIZER_KEY]:
            log.info("reusing the tokenizer trained by the earlier run in %s", cfg.out)
            return tokenizer, SP_TOKENIZER_NAME, local
    if cfg.num_parts is not None and cfg.num_parts > 1:
        raise DataError(
            "a prep split into parts needs one shared tokenizer: train it first with "
            "`dist-llm prep INPUTS --out DIR --tokenizer-only`, then pass "
            "--tokenizer DIR/tokenizer.model to every part"
        )
    policy = ErrorPolicy(cfg.on_error)  # counts are thrown away: the tokenizing pass counts again
    local = (
        join(cfg.out, SP_TOKENIZER_NAME)
        if is_local(cfg.out)
        else os.path.join(tempfile.mkdtemp(prefix="dist_llm_tok_"), SP_TOKENIZER_NAME)
    )
    started = time.perf_counter()
    train_sentencepiece(
        _training_texts(units, opts, policy, int(cfg.tokenizer_sample_mb * MIB)),
        local,
        cfg.vocab_size,
        cfg.tokenizer_type,
    )
    log.info(
        "trained %s tokenizer (vocab %d) in %.1fs",
        cfg.tokenizer_type,
        cfg.vocab_size,
        time.perf_counter() - started,
    )
    if not is_local(cfg.out):
        _publish_tokenizer(local, cfg.out)
    return load_tokenizer(local), SP_TOKENIZER_NAME, local


def _check_tokenizer(cfg: PrepConfig, tokenizer: Tokenizer) -> None:
    if tokenizer.eos_id is None:
        raise DataError(
            f"--tokenizer {cfg.tokenizer}: it has no EOS token, which prep appends to every "
            "document; use a tokenizer with an eos_token"
        )
    if cfg.add_bos and tokenizer.bos_id is None:
        raise DataError(f"--tokenizer {cfg.tokenizer}: it has no BOS token; drop --add-bos")


def _validate(cfg: PrepConfig) -> int:
    """Check arguments before touching anything; returns the worker count."""
    workers = cfg.workers if cfg.workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise DataError(f"--workers {cfg.workers} must be >= 1")
    if not 0 <= cfg.val_fraction < 1:
        raise DataError(f"--val-fraction {cfg.val_fraction} must be in [0, 1)")
    if cfg.unit_mb < 0:
        raise DataError(f"--unit-mb {cfg.unit_mb} must be >= 0 (0 = automatic)")
    cfg.filters.validate()
    ErrorPolicy(cfg.on_error)
    piece_count(0, cfg.dedup_piece_keys)  # refuses a bad value before any work, not at merge
    return workers


def _start_over(out: str) -> None:
    """--force: remove what earlier prep runs wrote (and nothing else) from `out`."""
    for name in (MANIFEST_NAME, SHARD_TABLE_NAME, PREP_NAME, SP_TOKENIZER_NAME):
        store.remove(join(out, name))
    for name in (UNITS_DIR, MERGE_DIR, HF_TOKENIZER_NAME):
        store.remove_prefix(join(out, name))


def _base_identity(cfg: PrepConfig, files: list[InputFile], unit_bytes: int, opts: ReadOptions) -> dict:
    return {
        "inputs": [[f.uri, f.identity] for f in files],
        "read": {k: v for k, v in dataclasses.asdict(opts).items() if k != "hf_cache_dir"},
        "filters": dataclasses.asdict(cfg.filters),
        "val_fraction": cfg.val_fraction,
        "shard_tokens": cfg.shard_tokens,
        "unit_bytes": unit_bytes,
        "add_bos": cfg.add_bos,
        # A given tokenizer is identified by its sha256 alone (added once loaded), not its path.
        "tokenizer": "given"
        if cfg.tokenizer
        else {"train": [cfg.vocab_size, cfg.tokenizer_type, cfg.tokenizer_sample_mb]},
    }


def _run_units(units: list[WorkUnit], job: UnitJob, workers: int, progress: bool, label: str) -> None:
    """Process the units with a progress bar on a terminal, or, in a log file (SLURM, nohup), a
    progress line with ETA at most every PROGRESS_LOG_S seconds."""
    reused = done = 0
    total = sum(u.size for u in units)
    started = last_line = time.perf_counter()
    bar_on = progress and sys.stderr.isatty()
    with tqdm(total=total, desc=label, unit="B", unit_scale=True, disable=not bar_on, file=sys.stderr) as bar:
        by_index = {u.index: u for u in units}
        for record in process_units(units, job, workers):
            reused += record["reused"]
            size = by_index[record["unit"]].size
            bar.update(size)
            done += size
            now = time.perf_counter()
            if progress and not bar_on and now - last_line >= PROGRESS_LOG_S and done < total:
                last_line = now
                eta = (now - started) * (total - done) / done
                log.info(
                    "%s: %.0f%% of %.1f MB | %.1f MB/s | ETA %s",
                    label,
                    100 * done / total,
                    total / 1e6,
                    done / 1e6 / (now - started),
                    format_eta(eta),
                )
    log.info(
        "%s: %d units done (%d reused from an earlier run) in %.1fs",
        label,
        len(units),
        reused,
        time.perf_counter() - started,
    )


def prepare(cfg: PrepConfig) -> Manifest | None:
    """Run this machine's part of the prep; returns the manifest once all parts are done."""
    workers = _validate(cfg)
    cfg.num_parts, cfg.part = resolve_part(cfg.num_parts, cfg.part)
    if is_local(cfg.out):
        os.makedirs(cfg.out, exist_ok=True)
    store.check_reachable(cfg.out)
    if cfg.force:
        _start_over(cfg.out)
    remove_manifest(cfg.out)

    inputs = list(cfg.inputs)
    if not inputs:
        corpus_dir = (
            join(cfg.out, DEFAULT_CORPUS_DIR)
            if is_local(cfg.out)
            else os.path.join(tempfile.gettempdir(), "dist_llm_" + DEFAULT_CORPUS_DIR)
        )
        inputs = build_default_corpus(corpus_dir, workers)
    opts = _read_options(cfg)
    resolve_policy = ErrorPolicy(cfg.on_error)
    files = resolve_inputs(inputs, opts, resolve_policy)
    if not files:
        raise DataError(f"no input files found in {inputs}")
    unit_bytes = int(cfg.unit_mb * MIB) or auto_unit_bytes(sum(f.size for f in files))
    units = plan_units(files, unit_bytes, opts)
    base = _base_identity(cfg, files, unit_bytes, opts)
    prep = check_settings(cfg.out, base)
    tokenizer, tokenizer_rel, tokenizer_local = _tokenizer(cfg, units, opts, prep)
    _check_tokenizer(cfg, tokenizer)
    args = dataclasses.asdict(cfg) | {"inputs": inputs}
    for key in _HOW_TO_RUN:
        args.pop(key)  # not part of what the data is; the manifest must not depend on them
    identity = check_or_write(
        cfg.out,
        base | {TOKENIZER_KEY: tokenizer.sha256},
        {
            "units": len(units),
            "tokenizer": tokenizer_rel,
            "args": args,
            "skipped_inputs": dict(resolve_policy.counts),
        },
    )
    if cfg.tokenizer_only:
        log.info("tokenizer written to %s", join(cfg.out, tokenizer_rel))
        return None

    job = UnitJob(
        cfg.out,
        identity,
        tokenizer_local,
        opts,
        cfg.filters,
        cfg.val_fraction,
        cfg.shard_tokens,
        cfg.add_bos,
        cfg.on_error,
    )
    mine = [u for u in units if u.index % cfg.num_parts == cfg.part]
    label = "prep" if cfg.num_parts == 1 else f"prep part {cfg.part}/{cfg.num_parts}"
    _run_units(mine, job, workers, cfg.progress, label)
    if not cfg.merge:
        log.info("%s done; merge with `dist-llm prep merge --out %s` once every part is", label, cfg.out)
        return None
    if cfg.num_parts > 1:
        _, missing = read_records(cfg.out, len(units), identity)
        if missing:  # the last part to finish merges; until then the others just stop
            log.info(
                "%s done; %d units of other parts still missing. The last part to finish writes "
                "the manifest (or run `dist-llm prep merge --out %s`)",
                label,
                len(missing),
                cfg.out,
            )
            return None
    return merge(cfg.out, tokenizer_local, workers=workers, piece_keys=cfg.dedup_piece_keys)
