"""`finetune(cfg)`: a classification head on a pretrained backbone, trained and evaluated per epoch.

Order of work, cheapest checks first: flags, then both labelled files (fields, label map, unknown
eval labels), then the backbone and tokenizer, then training. Single process, or several under
torchrun (WORLD_SIZE > 1): DDP over gloo on CPU (NCCL on GPUs); rank 0 writes the outputs.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from data_prep.tokenizer import Tokenizer, load_tokenizer
from dist_llm.data.sources import tokenizer_path
from dist_llm.distributed import World, init_distributed, shutdown
from dist_llm.errors import ConfigError, DataError, DistLLMError
from dist_llm.evaluate import LoadedModel, load_trained_model
from dist_llm.finetune.backbone import make_backbone
from dist_llm.finetune.config import FinetuneConfig
from dist_llm.finetune.data import Example, build_label_map, check_labels, read_examples
from dist_llm.finetune.encode import collate, encode_examples, framing, pad_id
from dist_llm.finetune.heads import HEADS, Classifier
from dist_llm.finetune.loop import (
    Progress,
    evaluate,
    freeze_unreached,
    make_optimizer,
    steps_per_epoch,
    train_epoch,
)
from dist_llm.finetune.metrics import sequence_metrics, token_metrics
from dist_llm.finetune.saved import METRICS, save_finetuned
from dist_llm.log import get_logger
from dist_llm.pretrained import is_hf_dir
from dist_llm.seeding import derive_seed

log = get_logger("finetune")

PRIMARY = {"seq": "accuracy", "token": "micro_f1"}
"""The metric that picks the best epoch."""


def read_labelled(cfg: FinetuneConfig) -> tuple[list[Example], list[Example], list[str]]:
    """(train examples, eval examples, label names); every file problem surfaces here, before loading."""
    train = read_examples(cfg.train, cfg)
    labels = build_label_map(train)
    if cfg.task == "seq" and len(labels) < 2:
        raise DataError(
            f"{cfg.train}: every example has label {labels[0]!r}; a classifier needs at "
            f"least 2 classes in field {cfg.label_field!r}"
        )
    evaluation = read_examples(cfg.eval, cfg)
    check_labels(evaluation, labels)
    return train, evaluation, labels


def resolve_tokenizer(cfg: FinetuneConfig, loaded: LoadedModel) -> Tokenizer:
    """--tokenizer, else an HF directory's own, else the tokenizer of the data the checkpoint trained on."""
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    if is_hf_dir(cfg.backbone):
        return load_tokenizer(cfg.backbone)
    data = loaded.cfg.data.source_list()[0].path
    try:
        return load_tokenizer(tokenizer_path(data))
    except (DistLLMError, OSError, KeyError) as exc:
        raise DataError(
            f"{cfg.backbone}: cannot load the tokenizer of its training data {data} ({exc}); "
            "pass --tokenizer with the tokenizer the backbone was trained with"
        ) from None


def check_fit(cfg: FinetuneConfig, loaded: LoadedModel, tokenizer: Tokenizer) -> None:
    """Token ids must have embeddings; positions must exist (T5's relative positions have no limit)."""
    model_cfg = loaded.cfg.model
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise DataError(
            f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} tokens but the backbone "
            f"{cfg.backbone} has {model_cfg.vocab_size} embeddings; pass --tokenizer with the "
            "backbone's own tokenizer"
        )
    if model_cfg.arch != "encoder_decoder" and cfg.max_length > model_cfg.max_seq_len:
        raise ConfigError(
            f"--max-length {cfg.max_length} exceeds the backbone's {model_cfg.max_seq_len} "
            f"positions (model.max_seq_len of {cfg.backbone}); lower --max-length"
        )


def build_classifier(
    cfg: FinetuneConfig, loaded: LoadedModel, num_labels: int, device: torch.device
) -> Classifier:
    """The head on the backbone; its init draws from its own seed, identical on every rank."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "finetune/head"))
        model = HEADS[cfg.task](make_backbone(loaded.model), num_labels, cfg.dropout)
    return model.to(device)


def _modules(names: list[str]) -> str:
    """ "backbone.model.decoder (28 tensors)" rather than 28 names: the log line stays readable."""
    counts: dict[str, int] = {}
    for name in names:
        module = ".".join(name.split(".")[:3])
        counts[module] = counts.get(module, 0) + 1
    return ", ".join(f"{module} ({n} tensors)" for module, n in counts.items()) or "none"


def _metrics(cfg: FinetuneConfig, matrix: torch.Tensor, labels: list[str]) -> dict[str, float]:
    if cfg.task == "seq":
        return sequence_metrics(matrix)
    return token_metrics(matrix, labels, cfg.outside_tag if cfg.outside_tag in labels else None)


def _train(cfg: FinetuneConfig, world: World) -> dict[str, Any]:
    train_examples, eval_examples, labels = read_labelled(cfg)
    if cfg.batch_size < world.size:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} is the global batch and must be at least the {world.size} ranks"
        )
    loaded = load_trained_model(cfg.backbone)
    tokenizer = resolve_tokenizer(cfg, loaded)
    check_fit(cfg, loaded, tokenizer)
    arch = loaded.cfg.model.arch
    frame, pad, per_token = framing(arch, tokenizer), pad_id(tokenizer), cfg.task == "token"
    train_set = encode_examples(train_examples, tokenizer, frame, labels, cfg.max_length, cfg.train)
    eval_set = encode_examples(eval_examples, tokenizer, frame, labels, cfg.max_length, cfg.eval)

    model = build_classifier(cfg, loaded, len(labels), world.device)
    probe = {k: v.to(world.device) for k, v in collate(train_set[:2], pad, per_token).items()}
    frozen = freeze_unreached(model, probe)
    trained = DistributedDataParallel(model) if world.size > 1 else model
    optimizer = make_optimizer(model, cfg)
    total_steps = cfg.epochs * steps_per_epoch(len(train_set), cfg.batch_size)
    # Dropout differs per rank (each sees different examples) but is fixed by the seed.
    torch.manual_seed(derive_seed(cfg.seed, f"finetune/dropout/{world.rank}"))
    log.info(
        "fine-tuning %s (%s, step %d) for %s: %d train / %d eval examples, %d labels, %d steps; frozen: %s",
        cfg.backbone,
        arch,
        loaded.step,
        cfg.task,
        len(train_set),
        len(eval_set),
        len(labels),
        total_steps,
        _modules(frozen),
    )

    if world.is_main:
        os.makedirs(cfg.out, exist_ok=True)
        open(os.path.join(cfg.out, METRICS), "w").close()
    history: list[dict[str, Any]] = []
    progress = Progress()
    for epoch in range(cfg.epochs):
        train_loss = train_epoch(
            trained, optimizer, train_set, cfg, epoch, progress, total_steps, world, pad, per_token
        )
        matrix, eval_loss = evaluate(model, eval_set, len(labels), cfg, world, pad, per_token)
        row = {
            "epoch": epoch + 1,
            "step": progress.step,
            "train_loss": train_loss,
            "eval_loss": eval_loss,
            **_metrics(cfg, matrix, labels),
        }
        history.append(row)
        log.info(
            "epoch %d/%d: %s",
            epoch + 1,
            cfg.epochs,
            " ".join(f"{k}={v:.4f}" for k, v in row.items() if isinstance(v, float)),
        )
        if world.is_main:
            with open(os.path.join(cfg.out, METRICS), "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    primary = PRIMARY[cfg.task]
    best = max(history, key=lambda r: r[primary])  # the first epoch among equals
    if world.is_main:
        summary = {
            "backbone": cfg.backbone,
            "backbone_step": loaded.step,
            "frozen": frozen,
            "primary_metric": primary,
            "epochs": history,
            "best": best,
            "final": history[-1],
        }
        save_finetuned(cfg.out, model, cfg, labels, loaded.cfg.model, tokenizer, summary)
    return history[-1]


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune, evaluating after each epoch; returns the final epoch's metrics (epoch, step,
    train_loss, eval_loss and the task's metrics, see `dist_llm.finetune.metrics`). Writes to cfg.out:
    model.safetensors, finetune.json (config, labels, per-epoch, best and final metrics), metrics.jsonl."""
    cfg.validate()
    joined = not dist.is_initialized()
    world = init_distributed("auto")
    final = _train(cfg, world)
    # Only after success, and only a group this call joined: on an error the ranks are not in step,
    # and a barrier here would hang the survivors (torchrun tears the job down instead).
    if joined:
        shutdown()
    return final
