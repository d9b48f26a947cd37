"""Command line for data prep: `dist-llm prep ...` and `python -m data_prep ...`.

Thin on purpose: parse, build a `PrepConfig`, call `prepare`. Errors are raised as
`DataError` so the one top-level handler prints them as a single line.
"""

from __future__ import annotations

import argparse

from data_prep.pipeline import PrepConfig, prepare
from data_prep.readers import FORMATS, ON_ERROR, TEXT_SPLITS
from data_prep.tokenizer import MODEL_TYPES

_DEFAULTS = PrepConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the prep arguments on `parser` (a subcommand parser or a standalone one)."""
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="text/JSONL files or directories; none = the built-in default corpus "
                             "(Python stdlib docstrings + pydoc topics)")
    parser.add_argument("--out", default=_DEFAULTS.out, help="output directory (default: %(default)s)")
    parser.add_argument("--format", choices=FORMATS, default=_DEFAULTS.format,
                        help="input format; auto: .jsonl/.json are JSONL, everything else text")
    parser.add_argument("--text-field", default=_DEFAULTS.text_field, help="JSONL key with the text")
    parser.add_argument("--text-split", choices=TEXT_SPLITS, default=_DEFAULTS.text_split,
                        help="text files: one document per file, line or blank-line paragraph")
    parser.add_argument("--workers", type=int, default=None,
                        help="tokenizer processes (default: CPU count; 1 = no pool)")
    parser.add_argument("--tokenizer", default=None,
                        help="existing sentencepiece .model or local HF tokenizer dir; "
                             "default: train sentencepiece on the inputs")
    parser.add_argument("--vocab-size", type=int, default=_DEFAULTS.vocab_size,
                        help="vocab size of a trained tokenizer (default: %(default)s)")
    parser.add_argument("--tokenizer-type", choices=MODEL_TYPES, default=_DEFAULTS.tokenizer_type)
    parser.add_argument("--val-fraction", type=float, default=_DEFAULTS.val_fraction,
                        help="share of documents hashed into validation (default: %(default)s)")
    parser.add_argument("--shard-tokens", type=int, default=_DEFAULTS.shard_tokens,
                        help="a shard closes once it holds this many tokens (default: %(default)s)")
    parser.add_argument("--add-bos", action="store_true", help="prepend BOS to every document")
    parser.add_argument("--on-error", choices=ON_ERROR, default=_DEFAULTS.on_error,
                        help="bad input: raise (default) or skip and count it in the manifest")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> PrepConfig:
    return PrepConfig(
        inputs=list(args.inputs), out=args.out, format=args.format, text_field=args.text_field,
        text_split=args.text_split, workers=args.workers, tokenizer=args.tokenizer,
        vocab_size=args.vocab_size, tokenizer_type=args.tokenizer_type,
        val_fraction=args.val_fraction, shard_tokens=args.shard_tokens, add_bos=args.add_bos,
        on_error=args.on_error, progress=not args.quiet,
    )


def run(args: argparse.Namespace) -> int:
    """Run prep from parsed arguments; returns the exit code (raises DataError on bad input)."""
    prepare(config_from_args(args))
    return 0
