"""Fine-tuning: classification heads on a pretrained backbone of any family.

Public API:
    FinetuneConfig                       one run's settings (one field per `dist-llm finetune` flag)
    finetune(cfg) -> dict                train + evaluate per epoch, write cfg.out, final metrics
    load_finetuned(out_dir) -> Finetuned a written directory back (model, labels, tokenizer)
    make_backbone(model) -> Backbone     hidden states and pooling for decoder / encoder / encoder_decoder
    SequenceClassifier, TokenClassifier  the heads
    cli.add_parser, cli.run              the CLI subcommand (wired into dist_llm.cli)

Modules: config (flags), records (JSONL/CSV with file:line), data (examples, label map), encode
(framing, truncation, subword tag alignment, batches), backbone, heads, metrics, loop (order,
optimizer, epoch, evaluation), saved (output directory), run (the `finetune` function), cli.
"""

from __future__ import annotations

from typing import Any

# Exports resolve on first use: `dist-llm --help` imports the CLI module through this package, and
# should not pay for torch, transformers and the model code to list a subcommand.
_EXPORTS = {
    "FinetuneConfig": "config",
    "finetune": "run",
    "load_finetuned": "saved",
    "Finetuned": "saved",
    "Backbone": "backbone",
    "make_backbone": "backbone",
    "SequenceClassifier": "heads",
    "TokenClassifier": "heads",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dist_llm.finetune' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"dist_llm.finetune.{_EXPORTS[name]}"), name)
