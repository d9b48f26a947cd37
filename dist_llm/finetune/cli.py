"""`dist-llm finetune`: flags -> FinetuneConfig -> finetune(). Prints the final metrics as JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys

from dist_llm.finetune.config import PRECISIONS, TASKS, FinetuneConfig


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "finetune",
        help="sequence or token classification head on a pretrained checkpoint "
        "or HF directory, from labelled JSONL/CSV, accuracy/F1 per epoch",
    )
    p.add_argument(
        "backbone",
        metavar="CHECKPOINT_OR_HF_DIR",
        help="run dir, checkpoint root, step directory, or local Hugging Face model directory",
    )
    p.add_argument(
        "--task", choices=TASKS, default="seq", help="seq: one label per example; token: one tag per word"
    )
    p.add_argument("--train", required=True, help="labelled training file (.jsonl, .csv, optionally .gz)")
    p.add_argument("--eval", required=True, help="labelled evaluation file, scored after every epoch")
    p.add_argument("--out", required=True, help="output directory (weights, finetune.json, metrics.jsonl)")
    p.add_argument("--text-field", default="text", help="seq: field holding the text")
    p.add_argument("--text-pair-field", default=None, help="seq: field holding a second text (pair tasks)")
    p.add_argument("--label-field", default="label", help="seq: field holding the label")
    p.add_argument(
        "--tokens-field",
        default="tokens",
        help="token: field holding the words (list, or space-separated string)",
    )
    p.add_argument("--tags-field", default="tags", help="token: field holding one tag per word")
    p.add_argument("--outside-tag", default="O", help="token: the no-entity tag F1 leaves out")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16, help="examples per step over all ranks")
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (linear warmup and decay)")
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--dropout", type=float, default=0.1, help="dropout before the classifier layer")
    p.add_argument("--max-length", type=int, default=128, help="tokens per example, special tokens included")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument(
        "--tokenizer", default=None, help="sentencepiece .model or HF tokenizer dir (default: the backbone's)"
    )
    return p


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    return FinetuneConfig(
        backbone=args.backbone,
        task=args.task,
        train=args.train,
        eval=args.eval,
        out=args.out,
        text_field=args.text_field,
        text_pair_field=args.text_pair_field,
        label_field=args.label_field,
        tokens_field=args.tokens_field,
        tags_field=args.tags_field,
        outside_tag=args.outside_tag,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay,
        dropout=args.dropout,
        max_length=args.max_length,
        seed=args.seed,
        precision=args.precision,
        tokenizer=args.tokenizer,
    )


def run(args: argparse.Namespace) -> int:
    """Validate every flag (files exist, numbers in range) before loading anything, then fine-tune.
    Library errors propagate as DistLLMError for dist_llm.cli to print as one line."""
    from dist_llm.finetune.run import finetune

    cfg = config_from_args(args)
    cfg.validate()
    final = finetune(cfg)
    if os.environ.get("RANK", "0") == "0":
        json.dump(final, sys.stdout)
        print()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m dist_llm.finetune.cli ARGS`, the subcommand on its own: a torchrun -m target."""
    from dist_llm.errors import DistLLMError

    parser = argparse.ArgumentParser(prog="dist-llm")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["finetune", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run(args)
    except DistLLMError as e:
        print(f"dist-llm finetune: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
