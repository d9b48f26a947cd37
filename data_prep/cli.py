"""Command line for data prep: `dist-llm prep ...` and `python -m data_prep ...`.

Thin on purpose: parse, build a `PrepConfig`, call `prepare` (or `merge` for
`dist-llm prep merge --out DIR`, which takes the work-split arguments too; a corpus file
literally named `merge` is passed as `./merge`).
Errors are raised as `DataError` so the one top-level handler prints them as a single line.
"""

from __future__ import annotations

import argparse
import os

from data_prep.dedup import PIECE_KEYS
from data_prep.filters import DEDUP_MODES, NORMALIZATIONS, FilterConfig
from data_prep.merge import merge
from data_prep.parts import resolve_part
from data_prep.pipeline import PrepConfig, prepare
from data_prep.readers import FORMATS, ON_ERROR, TEXT_SPLITS
from data_prep.tokenizer import MODEL_TYPES
from dist_llm.errors import DataError
from dist_llm.log import get_logger
from dist_llm.uri import is_local

log = get_logger("data_prep.cli")

_DEFAULTS = PrepConfig()
_FILTERS = FilterConfig()
MERGE = "merge"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the prep arguments on `parser` (a subcommand parser or a standalone one)."""
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="files, directories, globs or s3:// URIs (text, JSONL, .gz/.zst, Parquet, "
        "saved HF datasets); none = the built-in default corpus (Python stdlib "
        "docstrings + pydoc topics). `merge` as the only input merges the parts "
        "of a multi-machine prep in --out",
    )
    io = parser.add_argument_group("input and output")
    io.add_argument(
        "--out", default=_DEFAULTS.out, help="output directory or s3:// prefix (default: %(default)s)"
    )
    io.add_argument(
        "--format",
        choices=FORMATS,
        default=_DEFAULTS.format,
        help="input format; auto decides by file extension / HF dataset layout",
    )
    io.add_argument("--text-field", default=_DEFAULTS.text_field, help="JSONL key or column with the text")
    io.add_argument(
        "--text-split",
        choices=TEXT_SPLITS,
        default=_DEFAULTS.text_split,
        help="text files: one document per file, line or blank-line paragraph",
    )
    io.add_argument(
        "--hf-split", default=_DEFAULTS.hf_split, help="split of an HF dataset (default: %(default)s)"
    )
    io.add_argument(
        "--on-error",
        choices=ON_ERROR,
        default=_DEFAULTS.on_error,
        help="bad input: raise (default) or skip and count it in the manifest",
    )
    work = parser.add_argument_group("work split, resume")
    work.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (merge: threads; default: CPU count; 1 = no pool)",
    )
    work.add_argument(
        "--unit-mb",
        type=float,
        default=_DEFAULTS.unit_mb,
        help="input MiB per work unit (0 = automatic: total/64 within 1..128)",
    )
    work.add_argument(
        "--num-parts",
        type=int,
        default=None,
        help="machines sharing this prep (default: SLURM array or torchrun env, else 1)",
    )
    work.add_argument("--part", type=int, default=None, help="which part this machine runs (0-based)")
    work.add_argument(
        "--no-merge",
        action="store_true",
        help="parts stop after their units, for a merge spread over the machines: then run "
        "`prep merge --out DIR` on every part at the same time (e.g. one srun step)",
    )
    work.add_argument(
        "--dedup-piece-keys",
        type=int,
        default=PIECE_KEYS,
        help="document hashes one merge process sorts at once; bounds merge memory, not the "
        "result (default: %(default)s, about 150 MB)",
    )
    work.add_argument(
        "--force",
        action="store_true",
        help="discard an earlier prep in --out whose settings differ, instead of refusing",
    )
    tok = parser.add_argument_group("tokenizer")
    tok.add_argument(
        "--tokenizer",
        default=None,
        help="existing sentencepiece .model or local HF tokenizer dir; "
        "default: train sentencepiece on the inputs",
    )
    tok.add_argument(
        "--vocab-size",
        type=int,
        default=_DEFAULTS.vocab_size,
        help="vocab size of a trained tokenizer (default: %(default)s)",
    )
    tok.add_argument("--tokenizer-type", choices=MODEL_TYPES, default=_DEFAULTS.tokenizer_type)
    tok.add_argument(
        "--tokenizer-sample-mb",
        type=float,
        default=_DEFAULTS.tokenizer_sample_mb,
        help="input MiB read to train the tokenizer, spread over the corpus (default: %(default)s)",
    )
    tok.add_argument(
        "--tokenizer-only", action="store_true", help="train/copy the tokenizer into --out and stop"
    )
    shards = parser.add_argument_group("documents and shards")
    shards.add_argument(
        "--val-fraction",
        type=float,
        default=_DEFAULTS.val_fraction,
        help="share of documents hashed into validation (default: %(default)s)",
    )
    shards.add_argument(
        "--shard-tokens",
        type=int,
        default=_DEFAULTS.shard_tokens,
        help="a shard closes once it holds this many tokens (default: %(default)s)",
    )
    shards.add_argument("--add-bos", action="store_true", help="prepend BOS to every document")
    shards.add_argument(
        "--dedup",
        choices=DEDUP_MODES,
        default=_FILTERS.dedup,
        help="exact: drop later copies of identical documents (default: %(default)s)",
    )
    shards.add_argument(
        "--normalize",
        choices=NORMALIZATIONS,
        default=_FILTERS.normalize,
        help="Unicode normalization applied first (default: %(default)s)",
    )
    for name in ("min-chars", "max-chars", "min-tokens", "max-tokens"):
        shards.add_argument(f"--{name}", type=int, default=0, help=f"drop documents by {name} (0 = off)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> PrepConfig:
    filters = FilterConfig(
        normalize=args.normalize,
        dedup=args.dedup,
        min_chars=args.min_chars,
        max_chars=args.max_chars,
        min_tokens=args.min_tokens,
        max_tokens=args.max_tokens,
    )
    return PrepConfig(
        inputs=list(args.inputs),
        out=args.out,
        format=args.format,
        text_field=args.text_field,
        text_split=args.text_split,
        hf_split=args.hf_split,
        workers=args.workers,
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        tokenizer_type=args.tokenizer_type,
        tokenizer_sample_mb=args.tokenizer_sample_mb,
        tokenizer_only=args.tokenizer_only,
        val_fraction=args.val_fraction,
        shard_tokens=args.shard_tokens,
        unit_mb=args.unit_mb,
        add_bos=args.add_bos,
        filters=filters,
        on_error=args.on_error,
        num_parts=args.num_parts,
        part=args.part,
        dedup_piece_keys=args.dedup_piece_keys,
        merge=not args.no_merge,
        force=args.force,
        progress=not args.quiet,
    )


def run(args: argparse.Namespace) -> int:
    """Run prep (or merge) from parsed arguments; returns the exit code (raises DataError)."""
    if args.inputs[:1] == [MERGE]:
        if len(args.inputs) > 1:
            raise DataError(
                f"`prep merge` takes no inputs, got {args.inputs[1:]}; it merges the parts "
                "already written to --out"
            )
        num_parts, part = resolve_part(args.num_parts, args.part)
        workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
        merge(args.out, None, num_parts, part, workers, args.dedup_piece_keys)
        return 0
    manifest = prepare(config_from_args(args))
    if manifest is not None and not args.inputs and is_local(args.out):
        # The default corpus comes with tasks made from its held-out documents, which the main
        # job (configs/tiny.yaml) scores while it trains. Imported here: reading shards back pulls
        # in torch, which prep itself never needs.
        from dist_llm.tasks.continuation import DEFAULT_CORPUS_TASKS, write_continuation_task
        from dist_llm.tasks.files import TASKS_DIR

        for name, distractors in DEFAULT_CORPUS_TASKS.items():
            path = os.path.join(args.out, TASKS_DIR, f"{name}.jsonl")
            n = write_continuation_task(args.out, path, distractors=distractors)
            log.info("wrote task %s (%d examples)", path, n)
    return 0
